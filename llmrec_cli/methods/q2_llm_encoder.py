"""Quadrant 2, `llm_encoder`: a frozen LLM or sentence encoder embeds item text for a CRM (UniSRec style).

Feature -> config key:
- backbone: `model=minilm` (encoder) or a causal LM (`model=tiny-llama|smollm2`), pooled by `model.pooling`
  (mean over the last hidden states); every item's text (`llm.prompts.item_texts`) is embedded once,
  `method.batch_size` texts per forward pass, on `trainer.device`, then the LLM is released
- embedding cache: `$LLMREC_CACHE_DIR/embeddings/<model>-<key>.npy`, key = hash of (model name, name_or_path,
  pooling, texts), written atomically; a hit does not load the LLM at all (param `llm_encoder.embedding_cache`)
- text preprocessing: centred on the mean item and scaled to unit mean row norm; `method.whiten=true`:
  feature mode PCA-whitens the text vectors (decorrelated, unit variance per component), init mode gives
  every principal coordinate the same variance
- the CRM: `crm=sasrec|bpr`, trained by the baseline loop `fit_crm` (early stopping on `eval.monitor`, the best
  epoch restored); its own knobs (`crm.lr`, `crm.hidden`, ...) apply
- `method.mode=init`: the item table `item_emb` starts as the PCA projection of the text vectors onto its
  first k = min(d, text_dim) principal axes (deterministic, no fitting), scaled to the std of the table's own
  random init (0.02 SASRec, 0.1 BPR); columns beyond k keep their random init. Then everything trains as usual
- `method.mode=feature`: item vector = adapter(frozen text buffer) [+ trainable ID embedding,
  `method.fuse_id=true`], `method.adapter=linear|mlp` (the last layer rescaled so that the initial output has
  the ID table's init std); used for SASRec's input sequence and output scores and for BPR's item vectors,
  via the CRM hook `CRM.set_item_encoder`
- `crm.from_run=<run id>`: warm start from a finished CRM run of the same dataset and `crm=` (lineage tags via
  `crm.reuse.load_crm_run`): its weights are copied non-strictly; init mode keeps the text-initialised table
  (the run's `item_emb` is skipped), feature mode takes the run's `item_emb` as the ID embedding
- checkpoint: `checkpoint/q2_crm.pt` (CRM weights incl. the adapter and the frozen text buffers): `llmrec eval
  --run` rebuilds the fitted CRM without the LLM and without retraining
- logged: params `llm_encoder.*` (text_dim, mode, cache hit), `prompts/example_item_texts.txt`, costs
  `cost/embed_seconds`, `cost/tokens`, `cost/load_seconds`
"""
from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmrec_cli.crm.base import CRM, fit_crm
from llmrec_cli.crm.reuse import build_crm
from llmrec_cli.errors import ConfigError
from llmrec_cli.llm.prompts import item_texts
from llmrec_cli.methods.configs import LLMEncoderConfig
from llmrec_cli.methods.llm_base import LLMMethod
from llmrec_cli.methods.q3_embedding import cached_text_embeddings
from llmrec_cli.registry import register_method
from llmrec_cli.utils.io import atomic_path
from llmrec_cli.utils.runtime import seed_everything

CHECKPOINT = "q2_crm.pt"
MODES = ("init", "feature")
ADAPTERS = ("linear", "mlp")
CRMS = ("sasrec", "bpr", "gru4rec", "bert4rec", "lightgcn")  # trainable CRMs with an item table `item_emb`


# ---- text vectors -> CRM space -----------------------------------------------------------------------------


def prepare_text(emb: np.ndarray, whiten: bool = False, skip_first: bool = True) -> np.ndarray:
    """Centre the text vectors on their mean and scale them to unit mean row norm (float32, same shape);
    `whiten`: PCA-whiten instead (components with variance < 1e-6 of the largest are dropped). With
    `skip_first`, row 0 (padding) is left out of the statistics and stays zero."""
    x = np.asarray(emb, dtype=np.float64)
    real = x[1:] if skip_first else x
    centred = real - real.mean(0, keepdims=True)
    if whiten:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        keep = s > 1e-3 * s[0]  # variance ratio 1e-6
        centred = centred @ vt[keep].T / s[keep] * np.sqrt(len(real))  # unit variance per component
    scale = np.linalg.norm(centred, axis=1).mean()
    centred = centred / max(scale, 1e-12)
    if not skip_first:
        return centred.astype(np.float32)
    return np.concatenate([np.zeros((1, centred.shape[1])), centred]).astype(np.float32)


def pca_coordinates(text: np.ndarray, k: int, whiten: bool = False) -> tuple[np.ndarray, float]:
    """The real items' (rows 1..) coordinates on the first K principal axes of TEXT [n+1, t] -> ([n, k'],
    explained variance share), k' = min(k, t, n); `whiten`: each coordinate scaled to the same variance."""
    x = np.asarray(text[1:], dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(k, len(s))
    return (u[:, :k] if whiten else u[:, :k] * s[:k]), float((s[:k] ** 2).sum() / max((s ** 2).sum(), 1e-12))


@torch.no_grad()
def init_item_table(crm: CRM, text: np.ndarray, whiten: bool = False) -> dict[str, float]:
    """Mode `init`: overwrite the first k columns of `crm.item_emb` (rows 1..) with the PCA coordinates of
    TEXT (whitened: equal variance per coordinate) scaled to the std of the table's random init; returns
    figures to log."""
    weight = crm.item_emb.weight
    target = float(weight[1:].std())
    coords, explained = pca_coordinates(text, weight.shape[1], whiten)
    coords = coords * (target / max(float(coords.std()), 1e-12))
    weight[1:, :coords.shape[1]] = torch.as_tensor(coords, dtype=weight.dtype, device=weight.device)
    weight[0].zero_()
    return {"init_std": target, "init_columns": float(coords.shape[1]), "pca_explained_variance": explained}


def make_adapter(text_dim: int, dim: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(text_dim, dim)
    return nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))


class TextItemEncoder(nn.Module):
    """Item table = adapter(text) [+ ID table], row 0 (padding) zero. `text` is a frozen buffer (saved with the
    state dict, never trained)."""

    def __init__(self, text: torch.Tensor, dim: int, adapter: str, fuse_id: bool, init_std: float | None = None):
        super().__init__()
        self.register_buffer("text", torch.as_tensor(text, dtype=torch.float32).clone())
        self.fuse_id = bool(fuse_id)
        self.adapter = make_adapter(self.text.shape[1], dim, adapter)
        nonpad = torch.ones(len(self.text), 1)
        nonpad[0] = 0.0
        self.register_buffer("nonpad", nonpad, persistent=False)
        if init_std is not None:
            with torch.no_grad():  # the initial output has the ID table's init std
                last = self.adapter if isinstance(self.adapter, nn.Linear) else self.adapter[-1]
                last.bias.zero_()
                last.weight.mul_(init_std / max(float(self.adapter(self.text[1:]).std()), 1e-12))

    def forward(self, id_table: torch.Tensor) -> torch.Tensor:
        out = self.adapter(self.text)
        if self.fuse_id:
            out = out + id_table
        return out * self.nonpad


class TextUserEncoder(nn.Module):
    """A user's vector = linear(frozen user text vector), starting at zero (the CRM's own user representation
    is unchanged at the start of training)."""

    def __init__(self, text: torch.Tensor, dim: int):
        super().__init__()
        self.register_buffer("text", torch.as_tensor(text, dtype=torch.float32).clone())
        self.proj = nn.Linear(self.text.shape[1], dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.proj(self.text[users])


# ---- the method --------------------------------------------------------------------------------------------


@register_method("llm_encoder", quadrant="2", schema=LLMEncoderConfig)
class LLMEncoder(LLMMethod):
    """Frozen text embeddings -> CRM. Subclasses change what is embedded (`item_profiles`, `user_profiles`)."""

    prefix = "llm_encoder"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.crm: CRM | None = None
        self._released: dict[str, float] = {}
        self._cost["cost/embed_seconds"] = 0.0
        if str(ctx.cfg.crm.name) not in CRMS:
            raise ConfigError(f"method={cfg.name} feeds text into a trainable CRM with an item table: "
                              f"use crm={' | '.join(CRMS)}, not crm={ctx.cfg.crm.name}")
        for key, allowed in (("mode", MODES), ("adapter", ADAPTERS)):
            if str(cfg[key]) not in allowed:
                raise ConfigError(f"method.{key}={cfg[key]} is not one of {', '.join(allowed)}")

    # ---- LLM side ----------------------------------------------------------------------------------------
    def ensure_llm(self) -> None:
        if self.loaded is None and self.endpoint is None:
            self.setup_llm()

    def release_llm(self) -> None:
        """Free the backbone once the texts are embedded (the CRM trains without it); keep its cost figures."""
        if self.loaded is None:
            return
        self._released = {"cost/tokens": float(self.scorer.stats.get("tokens", 0)),
                          "model/num_parameters": float(self.loaded.num_parameters)}
        self.loaded = self.scorer = None
        gc.collect()
        if self.ctx.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def embedding_model(self):
        """The model config whose hidden states embed the texts (its fields key the embedding cache)."""
        return self.ctx.cfg.model

    def embedding_scorer(self):
        """The scorer whose `embed` turns texts into vectors: the backbone's, loaded on first use."""
        self.ensure_llm()
        return self.scorer

    def embed_texts(self, texts: list[str], what: str = "item") -> np.ndarray:
        """Cached embeddings [len(texts), d] of TEXTS (row 0 padding); the model is loaded only on a miss."""
        model_cfg = self.embedding_model()

        def compute(todo: list[str]) -> np.ndarray:
            scorer = self.embedding_scorer()
            t0 = time.perf_counter()
            out = scorer.embed(todo, pooling=str(model_cfg.pooling))
            self._cost["cost/embed_seconds"] += time.perf_counter() - t0
            return out

        emb, hit = cached_text_embeddings(model_cfg, texts, compute)
        self.ctx.log_params({f"{self.prefix}.{what}_embedding_cache": "hit" if hit else "miss",
                             f"{self.prefix}.text_dim": int(emb.shape[1])})
        return emb

    def item_profiles(self, data) -> np.ndarray:
        """Text vectors [n_items + 1, t] of the items (row 0 padding)."""
        texts = item_texts(data.items)
        self.ctx.log_text("\n".join(texts[1:11]), "prompts/example_item_texts.txt")
        return self.embed_texts(texts)

    def user_profiles(self, data) -> np.ndarray | None:
        """Text vectors [n_users, t] of the users, or None (llm_encoder has none)."""
        return None

    # ---- CRM side ----------------------------------------------------------------------------------------
    def build(self, data, items: np.ndarray | None, users: np.ndarray | None,
              state: dict | None = None) -> CRM:
        """The CRM with the text features attached: from the text vectors (fit), or from a saved STATE (load,
        where the buffers come from the state dict)."""
        crm = build_crm(self.ctx.cfg.crm, data.n_users, data.n_items, self.ctx.device)
        dim = crm.item_emb.embedding_dim
        whiten = bool(self.cfg.get("whiten", False))
        if state is not None:
            if "item_encoder.text" in state:
                crm.set_item_encoder(TextItemEncoder(state["item_encoder.text"], dim, str(self.cfg.adapter),
                                                     bool(self.cfg.fuse_id)))
            if "user_encoder.text" in state:
                crm.set_user_encoder(TextUserEncoder(state["user_encoder.text"], dim))
            return crm
        if self.cfg.mode == "init":
            figures = init_item_table(crm, prepare_text(items), whiten)
        else:
            text = prepare_text(items, whiten)
            init_std = float(crm.item_emb.weight.detach()[1:].std())
            crm.set_item_encoder(TextItemEncoder(torch.from_numpy(text), dim, str(self.cfg.adapter),
                                                 bool(self.cfg.fuse_id), init_std))
            figures = {"init_std": init_std}
        if users is not None:
            crm.set_user_encoder(TextUserEncoder(torch.from_numpy(prepare_text(users, whiten, skip_first=False)),
                                                 dim))
        self.ctx.log_params({f"{self.prefix}.{k}": round(v, 6) for k, v in figures.items()})
        return crm

    def warm_start(self, data) -> None:
        """`crm.from_run`: copy that run's CRM weights into ours, non-strictly (see the module docstring)."""
        run_id = self.ctx.cfg.crm.get("from_run")
        if not run_id:
            return
        from llmrec_cli.crm.reuse import load_crm_run

        source = load_crm_run(str(run_id), self.ctx, data).state_dict()
        if self.cfg.mode == "init":
            source.pop("item_emb.weight", None)
        own = self.crm.state_dict()
        bad = [k for k, v in source.items() if k in own and own[k].shape != v.shape]
        if bad:
            raise ConfigError(f"crm.from_run={run_id}: {', '.join(bad)} differ in shape from this run's "
                              f"crm={self.ctx.cfg.crm.name}: use the same crm.* sizes as that run")
        self.crm.load_state_dict({k: v for k, v in source.items() if k in own}, strict=False)
        self.ctx.log_params({f"{self.prefix}.warm_start_tensors": sum(k in own for k in source)})

    def fit(self, data):
        self.data = data
        items = self.item_profiles(data)
        users = self.user_profiles(data)
        self.release_llm()
        # The CRM starts from the run seed whatever came before: loading (or, on a cache hit, not loading) the
        # text model must not move the random state its initialisation and batches draw from.
        seed_everything(self.ctx.seed)
        self.crm = self.build(data, items, users)
        self.ctx.log_params({f"{self.prefix}.mode": str(self.cfg.mode),
                             f"{self.prefix}.crm_parameters": sum(p.numel() for p in self.crm.parameters())})
        self.warm_start(data)
        return fit_crm(self.crm, data, self.ctx, lambda: self.ctx.validate(self), self.ctx.monitor_name(self))

    # ---- scoring, save/load ------------------------------------------------------------------------------
    def score(self, users, histories, items):
        return self.timed(lambda: self.crm.score(users, histories, items).float().cpu().numpy(), len(users))

    def score_full(self, users, histories):
        return self.timed(lambda: self.crm.score(users, histories, None).float().cpu().numpy(), len(users))

    def cost_summary(self) -> dict[str, float]:
        return {**super().cost_summary(), **self._released}

    def save(self, path: Path) -> list[Path]:
        file = Path(path) / CHECKPOINT
        with atomic_path(file) as tmp:
            torch.save({"name": self.crm.cfg.name, "state_dict": self.crm.state_dict()}, tmp)
        return [file]

    def load(self, path: Path, data) -> None:
        self.data = data
        state = torch.load(Path(path) / CHECKPOINT, map_location=self.ctx.device, weights_only=False)
        if state.get("name") != self.ctx.cfg.crm.name:
            raise ConfigError(f"{path}/{CHECKPOINT} holds a {state.get('name')} CRM, the run's config says "
                              f"crm={self.ctx.cfg.crm.name}")
        self.crm = self.build(data, None, None, state=state["state_dict"])
        self.crm.setup(data)
        self.crm.load_state_dict(state["state_dict"])
        self.crm.eval()
