"""Quadrant 1, `collm`: a LoRA-tuned LLM that reads CRM embeddings as soft tokens in its prompt (CoLLM, LLaRA).

The prompt is the quadrant-4 prompt (`prompts/template_<head>.txt`) plus soft tokens: a vector from the CRM,
mapped by a trainable projector into the LLM's input-embedding space, sits right after each item's text (in the
history and candidate lines) and, optionally, a user vector on its own line before the history. Feature ->
config key:

- the recipe: `llmrec_cli.methods.llm_tuned.TunedLLM` with `SoftItems` (below) as its item representation and
  the head `method.head=pointwise` (Yes/No, P(Yes) / (P(Yes) + P(No)), TALLRec's samples and
  `method.negatives_per_user`, `method.use_ratings`) | `listwise` (letters over the candidates, the softmax
  restricted to the letters, `listwise_lora`'s samples): the same heads as quadrant 4 (`methods/heads.py`).
- items: `method.item_repr=title+id` (the title, then its soft token), `id` (the soft token alone, E4SRec style:
  about 3 tokens per item instead of about 10) or `title` (no item token; the user token stays).
- CRM: `crm=sasrec|bpr`, trained in-line before the LLM, or reused with `crm.from_run=<run id>`
  (`llmrec_cli.crm.reuse`; tags `crm_source`, `crm_from_run`). Frozen (eval mode, no gradients) unless
  `crm.trainable=true`: then its item/user vectors are computed inside the graph at every step and its
  parameters join the optimizer at `trainer.lr` (it stays in eval mode, i.e. without dropout).
- projector: `method.projector_hidden` (CRM dim -> hidden -> LLM hidden with GELU; 0: one linear layer),
  trained with LoRA in the same AdamW at `method.projector_lr` (LoRA: `trainer.lr`), saved in epoch
  checkpoints (`trainer`'s resume) and with the best epoch's weights (early stopping).
- user token: `method.use_user_embedding`; the user vector is the CRM's representation of the history the
  prompt is built from (a training sample: its training prefix; scoring: the history the evaluator passed),
  so it never sees a valid/test item the prompt could not show.
- the LLM scores prompts with `llmrec_cli.llm.scoring.Scorer` (batched, shared-prefix KV reuse) through
  `embed_fn`; training uses `train_lora(..., embed_fn=..., extra_params=...)`.

Soft tokens are extended token ids (V = the LM's input vocabulary size): item i is `V + i`; a user showing a
history is `V + n_items + 1 + slot`, where `slot` numbers the distinct (user, history) pairs in the order the
prompts first show them (`SoftTokens.user_slot`, which remembers the history it stands for). A prompt is
rendered as text with markers (`[[item:i]]`, `[[user:slot]]`), split at them, and the text pieces tokenised (the
first as `tokens.encode_prompts` does, the others without special tokens, the same at training and scoring
time) around the soft ids. The `embed_fn` looks ids < V up in the LM's embeddings and sends ids >= V through the
projector; extended ids never reach the embedding layer. In the token budgets a marker counts as one token.

Artifacts: `prompts/template_<head>.txt`, `prompts/example.txt` and `prompts/train_example.txt` with visible
placeholders (`[item-emb]`, `[user-emb]`), `prompts/soft_tokens.txt` (the layout); params `collm.*` and the
verbalizer ids. The checkpoint holds `adapter/` (peft), `projector.pt` and `crm.pt`; `llmrec eval` rebuilds all
three without retraining.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmrec_cli.errors import ConfigError, LlmrecError
from llmrec_cli.llm.prompts import PromptBuilder
from llmrec_cli.methods.configs import CollmConfig
from llmrec_cli.methods.heads import HEADS
from llmrec_cli.methods.llm_tuned import TunedLLM
from llmrec_cli.registry import register_method
from llmrec_cli.utils.io import atomic_path

PROJECTOR_FILE = "projector.pt"
MARKER = re.compile(r"\[\[(item|user):(\d+)\]\]")
SHOWN = {"item": "[item-emb]", "user": "[user-emb]"}


def item_marker(item: int) -> str:
    return f"[[item:{int(item)}]]"


def user_marker(slot: int) -> str:
    return f"[[user:{int(slot)}]]"


def build_projector(crm_dim: int, hidden: int, llm_dim: int) -> nn.Module:
    """CRM dim -> HIDDEN -> LLM dim with GELU (CoLLM's MLP mapper); HIDDEN=0: one linear layer."""
    if hidden <= 0:
        return nn.Linear(crm_dim, llm_dim)
    return nn.Sequential(nn.Linear(crm_dim, hidden), nn.GELU(), nn.Linear(hidden, llm_dim))


class SoftTokens:
    """`embed_fn`: token ids [B, T] -> input embeddings [B, T, H], ids >= vocab through the projector.

    EMBEDDINGS is the LM's input embedding layer, CRM the fitted recommender, N_ITEMS the catalogue size. User
    vectors come from the histories registered with `user_slot` (the ones the prompts show). With a frozen CRM
    (`cache=True`) the item table and the user vectors are computed once (`reset()` forgets them).
    """

    def __init__(self, embeddings: nn.Module, projector: nn.Module, crm, n_items: int, cache: bool):
        self.embeddings, self.projector, self.crm = embeddings, projector, crm
        self.vocab = int(embeddings.num_embeddings)
        self.n_items = int(n_items)
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self._items: torch.Tensor | None = None
        self._slots: dict[tuple[int, bytes], int] = {}
        self._slot_history: list[tuple[int, np.ndarray]] = []

    def reset(self) -> None:
        """Forget the cached CRM vectors (after changing a frozen CRM's weights)."""
        self._items = None
        if self.cache is not None:
            self.cache.clear()

    # ---- ids ------------------------------------------------------------------------------------------
    def item_id(self, item: int) -> int:
        return self.vocab + int(item)

    def user_slot(self, user: int, history: np.ndarray) -> int:
        """The slot of USER showing HISTORY (one per distinct pair; the history is kept for its vector)."""
        history = np.asarray(history, dtype=np.int64)
        key = (int(user), history.tobytes())
        if key not in self._slots:
            self._slots[key] = len(self._slot_history)
            self._slot_history.append((int(user), history.copy()))
        return self._slots[key]

    def slot_history(self, slot: int) -> tuple[int, np.ndarray]:
        """(user, history) a user slot stands for."""
        return self._slot_history[int(slot)]

    def user_id(self, slot: int) -> int:
        return self.vocab + self.n_items + 1 + int(slot)

    def decode(self, soft_id: int) -> tuple[str, int]:
        """("item", item) or ("user", slot) of an extended id."""
        rel = int(soft_id) - self.vocab
        if rel <= self.n_items:
            return "item", rel
        return "user", rel - self.n_items - 1

    def layout(self) -> dict:
        return {"vocab": self.vocab, "n_items": self.n_items, "item_id": "vocab + item_idx",
                "user_id": "vocab + n_items + 1 + slot (one per distinct (user, history) shown)"}

    # ---- embed_fn -------------------------------------------------------------------------------------
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        soft = ids >= self.vocab
        embeds = self.embeddings(ids.masked_fill(soft, 0))  # extended ids never reach the embedding layer
        if not bool(soft.any()):
            return embeds
        weight = next(self.projector.parameters())
        mapped = self.projector(self.vectors(ids[soft] - self.vocab).to(weight.dtype)).to(embeds.dtype)
        return embeds.masked_scatter(soft.unsqueeze(-1), mapped)

    def vectors(self, rel: torch.Tensor) -> torch.Tensor:
        """CRM vectors [M, d] for extended ids minus vocab (items 1..n_items, then user slots)."""
        is_item = rel <= self.n_items
        parts, where = [], []
        if bool(is_item.any()):
            parts.append(self.item_table()[rel[is_item]])
            where.append(is_item.nonzero()[:, 0])
        if not bool(is_item.all()):
            parts.append(self.user_vectors((rel[~is_item] - self.n_items - 1).tolist()))
            where.append((~is_item).nonzero()[:, 0])
        order = torch.cat(where)
        return torch.cat(parts)[torch.argsort(order)]

    def item_table(self) -> torch.Tensor:
        if self.cache is None:
            return self.crm.item_embeddings()  # in the graph: a trainable CRM gets gradients
        if self._items is None:
            with torch.no_grad():
                self._items = self.crm.item_embeddings().detach()
        return self._items

    def user_vectors(self, slots: list[int]) -> torch.Tensor:
        """The CRM's user representation per slot, from the history registered for it."""
        todo = sorted(set(slots) - set(self.cache or ()))
        if todo:
            users = np.asarray([self._slot_history[s][0] for s in todo], dtype=np.int64)
            histories = [self._slot_history[s][1] for s in todo]
            fresh = dict(zip(todo, self.crm.user_embeddings(users, histories), strict=True))
            if self.cache is None:
                return torch.stack([fresh[s] for s in slots])
            self.cache.update({s: v.detach() for s, v in fresh.items()})
        return torch.stack([self.cache[s] for s in slots])


ITEM_REPR = ("title+id", "id", "title")


@dataclass
class SoftPromptBuilder(PromptBuilder):
    """PromptBuilder whose item texts carry their item marker (`method.item_repr`: `title+id` the title then the
    marker, `id` the marker alone, E4SRec style, `title` no marker); in the token budgets a marker counts as the
    one input position it becomes."""

    item_repr: str = "title+id"

    def __post_init__(self):
        super().__post_init__()
        if self.item_repr == "id":
            self.texts = [item_marker(i) if i else t for i, t in enumerate(self.texts)]
        elif self.item_repr == "title+id":
            self.texts = [t + item_marker(i) if i else t for i, t in enumerate(self.texts)]

    def _size(self, text: str, special: bool = False) -> int:
        return super()._size(MARKER.sub("", text), special) + len(MARKER.findall(text))


class SoftItems:
    """Items as CRM soft tokens (`method.item_repr`), for the tuned-LLM recipe: the CRM, the projector, the
    soft-token prompts and their checkpoint files (see the module docstring)."""

    prompt_builder = SoftPromptBuilder

    def __init__(self, item_repr: str = "title+id"):
        self.name = f"soft:{item_repr}"
        self.item_repr = item_repr
        self.crm = None
        self.soft: SoftTokens | None = None
        self._saved_projector: dict | None = None
        self._piece_ids = None

    def check(self, m) -> None:
        cfg = m.cfg
        if str(cfg.item_repr) not in ITEM_REPR:
            raise ConfigError(f"method.item_repr={cfg.item_repr} is not one of {', '.join(ITEM_REPR)}")
        if int(cfg.projector_hidden) < 0:
            raise ConfigError(f"method.projector_hidden={cfg.projector_hidden} must be >= 0 (0: linear)")
        if float(cfg.projector_lr) <= 0:
            raise ConfigError(f"method.projector_lr={cfg.projector_lr} must be > 0")

    # ---- setup ----------------------------------------------------------------------------------------
    def before_backbone(self, m) -> None:
        """The CRM (unless `load` set it): trained in-line or reused (`crm.from_run`)."""
        from llmrec_cli.crm.reuse import component_crm

        if self.crm is None:
            t0 = time.perf_counter()
            self.crm = component_crm(m.ctx, m.data)
            m._cost["cost/crm_seconds"] = time.perf_counter() - t0
        self.crm.eval().requires_grad_(bool(m.ctx.cfg.crm.get("trainable", False)))

    def after_backbone(self, m) -> None:
        """The projector and the soft-token embed_fn of the scorer."""
        trainable = bool(m.ctx.cfg.crm.get("trainable", False))
        embeddings = m.loaded.model.get_input_embeddings()
        crm_dim = int(self.crm.item_embeddings().shape[1])
        torch.manual_seed(m.ctx.seed)
        projector = build_projector(crm_dim, int(m.cfg.projector_hidden), int(embeddings.embedding_dim))
        projector.to(m.ctx.device)
        self.soft = SoftTokens(embeddings, projector, self.crm, m.data.n_items, cache=not trainable)
        if self._saved_projector is not None:
            self._restore_projector(self._saved_projector)
        m.scorer.embed_fn = self.soft
        self._piece_ids = functools.lru_cache(maxsize=1 << 17)(functools.partial(self._tokenize, m))
        m.ctx.log_params({
            "collm.projector_parameters": sum(p.numel() for p in projector.parameters()),
            "collm.projector": "->".join(str(d) for d in (crm_dim, int(m.cfg.projector_hidden),
                                                          int(embeddings.embedding_dim)) if d > 0),
            "collm.crm": self.crm.cfg.name, "collm.crm_dim": crm_dim, "collm.crm_trainable": trainable,
            "collm.user_token": bool(m.cfg.use_user_embedding), "collm.vocab_size": self.soft.vocab,
            "collm.item_repr": self.item_repr,
            "collm.soft_tokens": "item: vocab + item_idx, after each item's text (item_repr=id: instead of it); "
                                 "user: vocab + n_items + 1 + slot (one per distinct user history shown), on a "
                                 "line before the history",
        })

    def _restore_projector(self, saved: dict) -> None:
        layout, mine = saved.get("layout", {}), self.soft.layout()
        if any(layout.get(k) != mine[k] for k in ("vocab", "n_items")):
            raise LlmrecError(f"{PROJECTOR_FILE} was written for soft-token layout {layout}, this run has {mine}: "
                              f"evaluate the checkpoint on the dataset and model it was trained with")
        self.soft.projector.load_state_dict(saved["state_dict"])

    def prompt_options(self, m) -> dict:
        return {"item_repr": self.item_repr}

    def train_options(self, m) -> dict:
        extra = [(list(self.soft.projector.parameters()), float(m.cfg.projector_lr))]
        if bool(m.ctx.cfg.crm.get("trainable", False)):
            extra.append((list(self.crm.parameters()), float(m.ctx.cfg.trainer.lr)))
        return {"embed_fn": self.soft, "extra_params": extra}

    def negative_crm(self, m):
        """`method.train_negatives=crm` reads the method's own CRM."""
        return self.crm

    def log_prompting(self, m) -> None:
        user = ("- [user-emb] on a line before the history: the CRM's representation of that history\n"
                if m.cfg.use_user_embedding else "")
        where = "instead of each item's text" if self.item_repr == "id" else "right after each item's text"
        m.ctx.log_text("Soft tokens (CRM vectors through the projector, one input position each):\n"
                       f"- [item-emb] {where} in the history and candidate lines\n"
                       f"{user}Extended ids: {self.soft.layout()}\n", "prompts/soft_tokens.txt")

    # ---- prompts --------------------------------------------------------------------------------------
    def history_lead(self, m, user: int, history: np.ndarray) -> str:
        if not m.cfg.use_user_embedding:
            return ""
        history = np.asarray(history)
        shown = history[history > 0]  # a masked-item prompt's hidden item (0) is not part of the user vector
        return f"User profile: {user_marker(self.soft.user_slot(user, shown))}\n"

    def encode(self, m, text: str, special: bool = True) -> list[int]:
        """Token ids of a marked TEXT: pieces between markers tokenised (the first with special tokens), the
        markers replaced by their extended ids."""
        parts = MARKER.split(text)
        ids = list(self._piece_ids(parts[0], special))
        for k in range(1, len(parts), 3):
            kind, a = parts[k:k + 2]
            ids.append(self.soft.item_id(int(a)) if kind == "item" else self.soft.user_id(int(a)))
            ids += self._piece_ids(parts[k + 2], False)
        return ids

    @staticmethod
    def _tokenize(m, piece: str, special: bool) -> tuple[int, ...]:
        """Token ids of a text PIECE; the first piece of a prompt (SPECIAL) as `tokens.encode_prompts` does."""
        from llmrec_cli.llm.tokens import encode_prompts

        if not piece:
            return ()
        return tuple(encode_prompts(m.loaded.tokenizer, [piece], special=special)[0])

    def show(self, m, prompt) -> str:
        """The prompt as the LLM reads it: text, with [item-emb] / [user-emb] where the soft tokens are."""
        if isinstance(prompt, str):
            return prompt
        out, run = [], []
        for t in [*prompt, None]:
            if t is not None and t < self.soft.vocab:
                run.append(int(t))
                continue
            if run:
                out.append(m.loaded.tokenizer.decode(run))
                run = []
            if t is not None:
                out.append(SHOWN[self.soft.decode(t)[0]])
        return "".join(out)

    # ---- checkpoint -----------------------------------------------------------------------------------
    def save(self, m, path: Path) -> list[Path]:
        """`projector.pt` (weights + soft-token layout) and `crm.pt` (`save_crm`)."""
        from llmrec_cli.crm.reuse import CRM_FILE, save_crm

        with atomic_path(path / PROJECTOR_FILE) as tmp:
            torch.save({"state_dict": self.soft.projector.state_dict(), "layout": self.soft.layout(),
                        "projector_hidden": int(m.cfg.projector_hidden)}, tmp)
        tmp_dir = Path(tempfile.mkdtemp(prefix=".crm-", dir=path))
        try:
            os.replace(save_crm(self.crm, tmp_dir), path / CRM_FILE)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        return [path / PROJECTOR_FILE, path / CRM_FILE]

    def load(self, m, path: Path) -> None:
        from llmrec_cli.crm.reuse import CRM_FILE, load_crm_file

        for name in (PROJECTOR_FILE, CRM_FILE):
            if not (path / name).is_file():
                raise LlmrecError(f"{path}/{name} not found: the checkpoint is not from a finished method=collm run")
        self.crm = load_crm_file(path, m.ctx.cfg.crm, m.data, m.ctx.device)
        self._saved_projector = torch.load(path / PROJECTOR_FILE, map_location=m.ctx.device, weights_only=True)
        m.ctx.set_tags({"crm_source": "checkpoint"})


@register_method("collm", quadrant="1", schema=CollmConfig)
def collm(cfg, ctx) -> TunedLLM:
    """The tuned-LLM recipe with CRM soft tokens and the head named by `method.head` (pointwise | listwise)."""
    if cfg.head not in HEADS:
        raise ConfigError(f"method.head={cfg.head} is not one of {', '.join(HEADS)}")
    return TunedLLM(cfg, ctx, head=HEADS[cfg.head](), items=SoftItems(str(cfg.get("item_repr", "title+id"))))
