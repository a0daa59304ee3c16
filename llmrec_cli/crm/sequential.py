"""What the next-item sequence models (SASRec, GRU4Rec) share: training windows, batching, the loss and scoring.

A subclass implements `encode(seq, table) -> [n, L, d]` for left-padded item sequences [n, L] (position L-1 is
the most recent item); everything else is here:

- training windows: each user's training sequence, cut from the end into windows of `max_len + 1` items
  (a user longer than `max_len` contributes several), the inputs `w[:-1]`, the targets `w[1:]`;
- batches of windows of similar length (little padding), in a seeded random order;
- the loss (`crm.loss`): `ce`, softmax cross-entropy over all items at every position, or `bce`, the original
  SASRec objective: a sigmoid on the target and on `crm.num_negatives` items drawn uniformly per position
  (redrawn when one hits the target);
- user representation = the state at the last position; scores = its dot product with the item table.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llmrec_cli.crm.base import CRM, dot_scores

LOSSES = ("ce", "bce")


def left_pad(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """[n, length] int64, the last `length` items of each sequence right-aligned, zeros on the left."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[r, length - len(s) :] = s
    return out


def training_windows(data, max_len: int, span: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Windows of up to SPAN items from the end of each training sequence, stepping back by MAX_LEN, and the user
    of each window. Windows shorter than 2 items are dropped."""
    windows, users = [], []
    for u in range(data.n_users):
        s = data.train_sequence(u)
        end = len(s)
        while end >= 2:
            windows.append(s[max(0, end - span) : end])
            users.append(u)
            end -= max_len
    return windows, np.asarray(users, dtype=np.int64)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of indices of similar length, in random order; random within a length."""
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sampled_bce(hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, num_negatives: int,
                generator: np.random.Generator) -> torch.Tensor:
    """Mean over positions of -log s(h.e_t) - sum_j log(1 - s(h.e_j)) for NUM_NEGATIVES uniform items j != t."""
    n_items = table.shape[0] - 1
    neg = generator.integers(1, n_items + 1, size=(len(targets), num_negatives))
    tgt = targets.cpu().numpy()[:, None]
    for _ in range(10):
        clash = neg == tgt
        if not clash.any():
            break
        neg[clash] = generator.integers(1, n_items + 1, size=int(clash.sum()))
    neg_t = torch.as_tensor(neg, device=hidden.device)
    pos_logit = (hidden * table[targets]).sum(-1)
    neg_logit = torch.einsum("nd,nkd->nk", hidden, table[neg_t])
    loss = F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)  # -log s(x) = softplus(-x)
    return loss.mean()


class SequentialCRM(CRM):
    """Base of the autoregressive next-item models; subclasses define `encode` (see the module docstring)."""

    #: Pad every training batch to max_len (the textbook loop; `scripts/bench_crm.py` compares against it).
    pad_to_max_len = False

    def __init__(self, cfg, n_users: int, n_items: int):
        super().__init__(cfg, n_users, n_items)
        if str(cfg.get("loss", "ce")) not in LOSSES:
            from llmrec_cli.errors import ConfigError

            raise ConfigError(f"crm.loss={cfg.loss} is not one of {', '.join(LOSSES)}")
        self._windows: list[np.ndarray] = []
        self._window_users = np.zeros(0, dtype=np.int64)

    def encode(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def setup(self, data) -> None:
        self._windows, self._window_users = training_windows(data, self.cfg.max_len, self.cfg.max_len + 1)

    def sequence_loss(self, hidden: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                      rng: np.random.Generator) -> torch.Tensor:
        """The loss of states HIDDEN [m, d] predicting TARGETS [m] (see `crm.loss`)."""
        if self.cfg.get("loss", "ce") == "bce":
            return sampled_bce(hidden, table, targets, int(self.cfg.num_negatives), rng)
        return F.cross_entropy(hidden @ table.T, targets)

    def train_epoch(self, data, optimizer, rng: np.random.Generator, progress: bool) -> float:
        L, dev = self.cfg.max_len, self.device
        total, count = 0.0, 0
        lengths = np.array([len(w) for w in self._windows])
        for idx in length_batches(lengths, self.cfg.batch_size, rng):
            batch = [self._windows[i] for i in idx]
            width = L if self.pad_to_max_len else min(L, max(len(w) for w in batch) - 1)
            inp = torch.as_tensor(left_pad([w[:-1] for w in batch], width), device=dev)
            tgt = torch.as_tensor(left_pad([w[1:] for w in batch], width), device=dev)
            table = self.item_table()
            hidden = self.add_user_offset(self.encode(inp, table), self._window_users[idx])
            mask = tgt > 0
            loss = self.sequence_loss(hidden[mask], table, tgt[mask], rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = int(mask.sum())
            total += loss.item() * n
            count += n
        return total / max(count, 1)

    def user_embeddings(self, users, histories) -> torch.Tensor:
        """[n, d] last-position states (differentiable: a jointly tuned CRM learns through them)."""
        width = max(1, min(self.cfg.max_len, max((len(h) for h in histories), default=1)))
        seq = torch.as_tensor(left_pad(histories, width), device=self.device)
        return self.add_user_offset(self.encode(seq)[:, -1], users)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_table()

    @torch.no_grad()
    def score(self, users, histories, items):
        h = self.user_embeddings(users, histories)
        return dot_scores(h, self.item_table(), items)
