"""Conventional recommenders: a small shared base and the training loop with early stopping.

A CRM scores items for (user, history) pairs and exposes its item/user embeddings and top-K retrieval, so later
quadrants can reuse it as a component (`candidates=crm_topk`, CRM embeddings in prompts, text-initialised
item tables). Training sees only the training-only view (`llmrec_cli.data.views.TrainView`).

Hooks for quadrant 2 (both None for baselines, which then run exactly as without them):
- `set_item_encoder(module)`: `module(id_table) -> [n_items + 1, d]` replaces the item table (`item_emb.weight`)
  everywhere the CRM uses item vectors (row 0, padding, must stay zero), e.g. adapter(text) + ID embedding;
- `set_user_encoder(module)`: `module(user_idx) -> [n, d]` is added to the user representation.
Both modules are sub-modules, so their parameters train with the CRM and their buffers are in `state_dict`.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmrec_cli.data.views import TrainView
from llmrec_cli.utils.progress import progress_bar

log = logging.getLogger(__name__)


class CRM(nn.Module):
    """Base class. Subclasses implement `score`, and trainable ones `train_epoch` and `item_embeddings`."""

    trainable = True
    #: CPU threads for a pure CRM run when `trainer.num_threads` is null (None: every core), set from
    #: `scripts/bench_crm.py --thread-matrix` for models whose tensors are too small to share out.
    cpu_threads: int | None = None

    def __init__(self, cfg, n_users: int, n_items: int):
        super().__init__()
        self.cfg, self.n_users, self.n_items = cfg, n_users, n_items
        self.item_encoder: nn.Module | None = None
        self.user_encoder: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def setup(self, data: TrainView) -> None:
        """Read what the model needs from training data (called before training and after loading)."""

    def train_epoch(self, data: TrainView, optimizer, rng: np.random.Generator, progress: bool) -> float:
        raise NotImplementedError

    def score(self, users: np.ndarray, histories: list[np.ndarray], items: np.ndarray | None) -> torch.Tensor:
        """Scores [n, c] of candidate `items` ([n, c]), or [n, n_items + 1] over all items when items is None."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, d]; row 0 is padding."""
        raise NotImplementedError

    def set_item_encoder(self, module: nn.Module | None) -> None:
        """Compute the item table with MODULE (see the module docstring); None restores the plain ID table."""
        self.item_encoder = module.to(self.device) if module is not None else None

    def set_user_encoder(self, module: nn.Module | None) -> None:
        """Add MODULE(user indices) to the user representation; None removes it."""
        self.user_encoder = module.to(self.device) if module is not None else None

    def item_table(self) -> torch.Tensor:
        """The effective item table [n_items + 1, d]: the ID table `item_emb.weight`, or the item encoder's
        output for it. CRMs with an item table name it `item_emb`."""
        ids = self.item_emb.weight
        return ids if self.item_encoder is None else self.item_encoder(ids)

    def add_user_offset(self, reps: torch.Tensor, users) -> torch.Tensor:
        """REPS [n, d] (or [n, L, d]) of USERS plus the user encoder's vectors; REPS itself without an encoder."""
        if self.user_encoder is None:
            return reps
        offset = self.user_encoder(torch.as_tensor(users, dtype=torch.long, device=reps.device))
        return reps + (offset[:, None] if reps.dim() == 3 else offset)

    def user_embeddings(self, users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        """[n, d] user representations in the item-embedding space."""
        raise NotImplementedError

    @torch.no_grad()
    def topk(self, users: np.ndarray, histories: list[np.ndarray], k: int, exclude_history: bool = True) -> np.ndarray:
        """Top-K item indices [n, k] over the whole catalogue (history items excluded by default)."""
        scores = self.score(users, histories, None).float()
        scores[:, 0] = -torch.inf
        if exclude_history:
            for r, h in enumerate(histories):
                scores[r, torch.as_tensor(np.array(h), dtype=torch.long, device=scores.device)] = -torch.inf
        return scores.topk(k, dim=1).indices.cpu().numpy()

    def make_optimizer(self):
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)


def sample_unseen(users: np.ndarray, seen: set[int], n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One uniform item per entry of USERS, redrawn (up to 20 times) while it is a training positive of that user;
    SEEN holds `user * (n_items + 1) + item` of every training pair."""
    neg = rng.integers(1, n_items + 1, size=len(users))
    for _ in range(20):
        bad = np.fromiter(((int(u) * (n_items + 1) + int(i)) in seen for u, i in zip(users, neg, strict=True)),
                          dtype=bool, count=len(users))
        if not bad.any():
            break
        neg[bad] = rng.integers(1, n_items + 1, size=int(bad.sum()))
    return neg


def dot_scores(users_vecs: torch.Tensor, table: torch.Tensor, items: np.ndarray | None) -> torch.Tensor:
    """<user, item> scores: [n, n_items + 1] over TABLE, or [n, c] for candidate ITEMS [n, c]."""
    if items is None:
        return users_vecs @ table.T
    it = torch.nn.functional.embedding(torch.as_tensor(items, dtype=torch.long, device=table.device), table)
    return torch.einsum("nd,ncd->nc", users_vecs, it)


def gather_or_all(scores_all: torch.Tensor, items: np.ndarray | None) -> torch.Tensor:
    if items is None:
        return scores_all
    return scores_all.gather(1, torch.as_tensor(items, dtype=torch.long, device=scores_all.device))


CHECKPOINT = "crm_checkpoint.pt"


def fit_crm(crm: CRM, data: TrainView, ctx, validate, monitor: str) -> dict[str, float]:
    """Train with early stopping on the valid metric `monitor`; restore the best epoch's weights.

    `validate()` returns valid-split metrics for the current weights; `ctx.log_metrics` gets per-epoch
    `train/loss`, `train/epoch_seconds` and the valid metrics. After every epoch the model, optimizer,
    early-stopping state and RNG states go to `<run dir>/crm_checkpoint.pt` (atomically); with `resume=true` a
    checkpoint of the same configuration (`config_fingerprint`) there continues at the next epoch. Returns a
    summary for the run.
    """
    from llmrec_cli.config.fingerprint import config_fingerprint
    from llmrec_cli.utils.console import epochs_line, say

    crm.setup(data)
    if not crm.trainable:
        return {"epochs": 0.0}
    tcfg = ctx.cfg.trainer
    say(epochs_line(tcfg, crm.cfg.name))
    rng = np.random.default_rng(ctx.seed)
    optimizer = crm.make_optimizer()
    st = {"epoch": 0, "best": -np.inf, "best_epoch": 0, "best_state": None, "bad": 0}
    path = Path(ctx.output_dir) / CHECKPOINT
    fingerprint = config_fingerprint(ctx.cfg)
    if bool(ctx.cfg.get("resume", False)):
        st = _resume_crm(crm, optimizer, rng, path, fingerprint, st)
    epoch_times = []
    epoch = st["epoch"]
    bar = progress_bar(range(st["epoch"] + 1, tcfg.max_epochs + 1), desc=f"train {crm.cfg.name}",
                       enabled=ctx.progress)
    for epoch in bar:
        if st["bad"] >= tcfg.patience:
            epoch -= 1
            break  # the resumed run had already stopped early
        t0 = time.perf_counter()
        crm.train()
        loss = crm.train_epoch(data, optimizer, rng, progress=False)
        epoch_times.append(time.perf_counter() - t0)
        logged = {"train/loss": loss, "train/epoch_seconds": epoch_times[-1]}
        if epoch % tcfg.eval_every == 0 or epoch == tcfg.max_epochs:
            crm.eval()
            valid = validate()
            logged.update(valid)
            value = valid[monitor]
            if value > st["best"]:
                st.update(best=value, best_epoch=epoch, bad=0, best_state=copy.deepcopy(crm.state_dict()))
            else:
                st["bad"] += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss:.4f}", **{monitor.split("/")[-1]: f"{value:.4f}",
                                                       "best": f"{st['best']:.4f}"})
        ctx.log_metrics(logged, epoch)
        st["epoch"] = epoch
        _save_crm(crm, optimizer, rng, path, fingerprint, st)
        if st["bad"] >= tcfg.patience:
            log.info("early stop at epoch %d (best %s=%.4f at epoch %d)", epoch, monitor, st["best"],
                     st["best_epoch"])
            break
    if st["best_state"] is not None:
        crm.load_state_dict(st["best_state"])
    crm.eval()
    return {"epochs": float(epoch), "best_epoch": float(st["best_epoch"]), f"best/{monitor}": float(st["best"]),
            "seconds_per_epoch": float(np.mean(epoch_times)) if epoch_times else 0.0}


def _save_crm(crm: CRM, optimizer, rng: np.random.Generator, path: Path, fingerprint: str, st: dict) -> None:
    from llmrec_cli.utils.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({**st, "fingerprint": fingerprint, "model": crm.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, tmp)


def _resume_crm(crm: CRM, optimizer, rng: np.random.Generator, path: Path, fingerprint: str, st: dict) -> dict:
    from llmrec_cli.utils.console import say

    if not path.is_file():
        say(f"resume=true: no CRM checkpoint at {path}: training {crm.cfg.name} starts at epoch 1")
        return st
    saved = torch.load(path, map_location=crm.device, weights_only=False)  # our own file
    if saved.get("fingerprint") != fingerprint:
        say(f"resume=true: {path} is of another configuration: training {crm.cfg.name} starts at epoch 1")
        return st
    crm.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    rng.bit_generator.state = saved["rng"]
    torch.set_rng_state(saved["torch_rng"])
    say(f"resume=true: resuming {crm.cfg.name} from {path} after epoch {saved['epoch']} "
        f"(best {saved['best']:.4f} at epoch {saved['best_epoch']})")
    return {k: saved[k] for k in st}
