"""SASRec (Kang & McAuley, ICDM 2018) with cross-entropy over all items at every position.

Sequences are left-padded to `max_len`; a user longer than `max_len` contributes several training windows
(stepping back from the end by `max_len`). The item table is shared by input and output; it is `item_emb`, or
the output of a quadrant-2 item encoder (`CRM.set_item_encoder`). A user encoder's vector is added to the
hidden state of every position (the last one is the user representation).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec_cli.crm.base import CRM
from llmrec_cli.crm.configs import SASRecConfig
from llmrec_cli.registry import register_crm


def left_pad(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """[n, length] int64, the last `length` items of each sequence right-aligned, zeros on the left."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[r, length - len(s) :] = s
    return out


@register_crm("sasrec", schema=SASRecConfig)
class SASRec(CRM):
    #: Pad every training batch to max_len (the textbook loop; `scripts/bench_crm.py` compares against it).
    pad_to_max_len = False
    def __init__(self, cfg, n_users: int, n_items: int):
        super().__init__(cfg, n_users, n_items)
        h = cfg.hidden
        self.item_emb = nn.Embedding(n_items + 1, h, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, h)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(h, cfg.heads, dim_feedforward=h, dropout=cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(h)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        causal = torch.triu(torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self._windows: list[np.ndarray] = []
        self._window_users = np.zeros(0, dtype=np.int64)

    def encode(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [n, L, h] for left-padded item sequences [n, L] (item vectors from TABLE, default
        `item_table()`)."""
        L = seq.shape[1]
        table = self.item_table() if table is None else table
        # Positions count back from the most recent item, as if every sequence were padded to max_len, so a
        # user's scores do not depend on how wide the batch is.
        pos = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=seq.device)
        x = F.embedding(seq, table, padding_idx=0) * (self.cfg.hidden ** 0.5) + self.pos_emb(pos)[None]
        x = self.emb_dropout(x)
        pad = seq == 0
        x = self.encoder(x, mask=self.causal_mask[:L, :L], src_key_padding_mask=pad, is_causal=True)
        return self.final_norm(x)

    def setup(self, data) -> None:
        L = self.cfg.max_len
        windows, users = [], []
        for u in range(data.n_users):
            s = data.train_sequence(u)
            end = len(s)
            while end >= 2:
                windows.append(s[max(0, end - L - 1) : end])
                users.append(u)
                end -= L
        self._windows = windows
        self._window_users = np.asarray(users, dtype=np.int64)

    def train_epoch(self, data, optimizer, rng: np.random.Generator, progress: bool) -> float:
        L, dev = self.cfg.max_len, self.device
        total, count = 0.0, 0
        for idx in self._length_batches(rng):
            batch = [self._windows[i] for i in idx]
            width = L if self.pad_to_max_len else min(L, max(len(w) for w in batch) - 1)
            inp = torch.as_tensor(left_pad([w[:-1] for w in batch], width), device=dev)
            tgt = torch.as_tensor(left_pad([w[1:] for w in batch], width), device=dev)
            table = self.item_table()
            hidden = self.add_user_offset(self.encode(inp, table), self._window_users[idx])
            mask = tgt > 0
            logits = hidden[mask] @ table.T
            loss = F.cross_entropy(logits, tgt[mask])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = int(mask.sum())
            total += loss.item() * n
            count += n
        return total / max(count, 1)

    def _length_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Batches of windows of similar length (little padding), in random order; random within a length."""
        lengths = np.array([len(w) for w in self._windows])
        order = np.lexsort((rng.random(len(lengths)), lengths))
        batches = [order[s : s + self.cfg.batch_size] for s in range(0, len(order), self.cfg.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def user_embeddings(self, users, histories) -> torch.Tensor:
        """[n, hidden] last-position states (differentiable: a jointly tuned CRM learns through them)."""
        width = max(1, min(self.cfg.max_len, max((len(h) for h in histories), default=1)))
        seq = torch.as_tensor(left_pad(histories, width), device=self.device)
        return self.add_user_offset(self.encode(seq)[:, -1], users)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_table()

    @torch.no_grad()
    def score(self, users, histories, items):
        h = self.user_embeddings(users, histories)
        table = self.item_table()
        if items is None:
            return h @ table.T
        it = F.embedding(torch.as_tensor(items, dtype=torch.long, device=self.device), table)
        return torch.einsum("nd,ncd->nc", h, it)
