"""BPR-MF (Rendle et al., UAI 2009): score = <user, item>, trained on (user, positive, sampled negative).

Item vectors come from `item_table()` (`item_emb`, or a quadrant-2 item encoder); a user encoder's vector is
added to the user embedding.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec_cli.crm.base import CRM, dot_scores, sample_unseen
from llmrec_cli.crm.configs import BPRConfig
from llmrec_cli.registry import register_crm


@register_crm("bpr", schema=BPRConfig)
class BPR(CRM):
    # Tensors too small to share out: on ML-100K one thread runs an epoch in 0.50 s alone and beside a busy
    # process, two threads in 0.44-0.84 s alone and 1.2-1.8 s beside one (scripts/bench_crm.py --thread-matrix).
    cpu_threads = 1

    def __init__(self, cfg, n_users: int, n_items: int):
        super().__init__(cfg, n_users, n_items)
        self.user_emb = nn.Embedding(n_users, cfg.dim)
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        self._pairs: tuple[np.ndarray, np.ndarray] | None = None

    def setup(self, data) -> None:
        users, items = data.train_pairs()
        self._pairs = (users, items)
        self._seen = set((users.astype(np.int64) * (self.n_items + 1) + items).tolist())

    def train_epoch(self, data, optimizer, rng: np.random.Generator, progress: bool) -> float:
        users, items = self._pairs
        order = rng.permutation(len(users))
        total, n = 0.0, 0
        dev = self.device
        for s in range(0, len(order), self.cfg.batch_size):
            idx = order[s : s + self.cfg.batch_size]
            u = np.repeat(users[idx], self.cfg.num_negatives)
            pos = np.repeat(items[idx], self.cfg.num_negatives)
            neg = self._sample_negatives(u, rng)
            u_t, p_t, n_t = (torch.as_tensor(x, dtype=torch.long, device=dev) for x in (u, pos, neg))
            table = self.item_table()
            ue = self.add_user_offset(self.user_emb(u_t), u_t)
            pe, ne = F.embedding(p_t, table, padding_idx=0), F.embedding(n_t, table, padding_idx=0)
            diff = (ue * pe).sum(-1) - (ue * ne).sum(-1)
            loss = -F.logsigmoid(diff).mean() + self.cfg.reg * (ue.pow(2).sum() + pe.pow(2).sum() + ne.pow(2).sum()) / len(u)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(u)
            n += len(u)
        return total / max(n, 1)

    def _sample_negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sample_unseen(users, self._seen, self.n_items, rng)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_table()

    def user_embeddings(self, users, histories) -> torch.Tensor:
        u_t = torch.as_tensor(users, dtype=torch.long, device=self.device)
        return self.add_user_offset(self.user_emb(u_t), u_t)

    @torch.no_grad()
    def score(self, users, histories, items):
        ue = self.user_embeddings(users, histories)
        return dot_scores(ue, self.item_table(), items)
