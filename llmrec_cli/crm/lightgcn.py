"""LightGCN (He et al., SIGIR 2020): ID embeddings smoothed over the user-item graph, trained with BPR.

The graph is the training interactions only, as a symmetric normalised adjacency D^-1/2 A D^-1/2 over
users + items (a torch sparse matrix). The final embedding of a node is the mean of its embeddings after
0..`crm.layers` propagation steps; score = <user, item>. Each training batch propagates the whole graph (the
paper's loop) and takes (user, positive, one uniform negative not among the user's training items) triples with
L2 `crm.reg` on their step-0 embeddings. In eval mode the propagated tables are computed once and reused until
the weights change. Hooks: a quadrant-2 item encoder replaces the step-0 item table, a user encoder's vector is
added to the final user embedding.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec_cli.crm.base import CRM, dot_scores, sample_unseen
from llmrec_cli.crm.configs import LightGCNConfig
from llmrec_cli.registry import register_crm


def normalized_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """Sparse [N, N] D^-1/2 A D^-1/2, N = n_users + n_items + 1 (node n_users + i is item i; item 0 isolated)."""
    n = n_users + n_items + 1
    pairs = np.unique(np.stack([users, items + n_users]), axis=1)  # repeated interactions count once
    rows = np.concatenate([pairs[0], pairs[1]])
    cols = np.concatenate([pairs[1], pairs[0]])
    degree = np.bincount(rows, minlength=n).astype(np.float64)
    inv = np.zeros(n)
    inv[degree > 0] = degree[degree > 0] ** -0.5
    values = inv[rows] * inv[cols]
    adj = torch.sparse_coo_tensor(torch.as_tensor(np.stack([rows, cols])), torch.as_tensor(values, dtype=torch.float32),
                                  (n, n), check_invariants=True)
    return adj.coalesce()


@register_crm("lightgcn", schema=LightGCNConfig)
class LightGCN(CRM):
    def __init__(self, cfg, n_users: int, n_items: int):
        super().__init__(cfg, n_users, n_items)
        self.user_emb = nn.Embedding(n_users, cfg.dim)
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.adj: torch.Tensor | None = None
        self._cache: tuple | None = None

    def setup(self, data) -> None:
        users, items = data.train_pairs()
        self._pairs = (users, items)
        self._seen = set((users.astype(np.int64) * (self.n_items + 1) + items).tolist())
        self.adj = normalized_adjacency(users, items, self.n_users, self.n_items).to(self.device)
        self._cache = None

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(final user table [n_users, d], final item table [n_items + 1, d])."""
        if not self.training and self._cache is not None and self._cache[0] == self._weights_version():
            return self._cache[1]
        x = torch.cat([self.user_emb.weight, self.item_table()])
        total = x
        for _ in range(self.cfg.layers):
            x = torch.sparse.mm(self.adj, x)
            total = total + x
        final = total / (self.cfg.layers + 1)
        out = (final[: self.n_users], final[self.n_users :])
        if not self.training:
            self._cache = (self._weights_version(), out)
        return out

    def _weights_version(self) -> tuple:
        """Changes whenever a parameter is updated in place (optimizer steps, load_state_dict)."""
        return tuple(p._version for p in self.parameters())

    def train_epoch(self, data, optimizer, rng: np.random.Generator, progress: bool) -> float:
        users, items = self._pairs
        order = rng.permutation(len(users))
        dev, k = self.device, self.cfg.num_negatives
        total, n = 0.0, 0
        for s in range(0, len(order), self.cfg.batch_size):
            idx = order[s : s + self.cfg.batch_size]
            u, pos = np.repeat(users[idx], k), np.repeat(items[idx], k)
            neg = self._sample_negatives(u, rng)
            u_t, p_t, n_t = (torch.as_tensor(x, dtype=torch.long, device=dev) for x in (u, pos, neg))
            user_final, item_final = self.propagate()
            ue = self.add_user_offset(user_final[u_t], u_t)
            diff = (ue * item_final[p_t]).sum(-1) - (ue * item_final[n_t]).sum(-1)
            table = self.item_table()
            reg = (self.user_emb(u_t).pow(2).sum() + F.embedding(p_t, table).pow(2).sum()
                   + F.embedding(n_t, table).pow(2).sum()) / len(u)
            loss = -F.logsigmoid(diff).mean() + self.cfg.reg * reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(u)
            n += len(u)
        self._cache = None
        return total / max(n, 1)

    def _sample_negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sample_unseen(users, self._seen, self.n_items, rng)

    def item_embeddings(self) -> torch.Tensor:
        return self.propagate()[1]

    def user_embeddings(self, users, histories) -> torch.Tensor:
        u_t = torch.as_tensor(users, dtype=torch.long, device=self.device)
        return self.add_user_offset(self.propagate()[0][u_t], u_t)

    @torch.no_grad()
    def score(self, users, histories, items):
        ue = self.user_embeddings(users, histories)
        return dot_scores(ue, self.item_embeddings(), items)
