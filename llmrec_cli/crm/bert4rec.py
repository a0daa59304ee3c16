"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional transformer trained by cloze masking.

Training: every epoch each window of a user's training sequence (its last `max_len` items, stepping back by
`max_len` for longer users) gets `crm.mask_prob` of its items (at least one) replaced by a learned [mask] vector;
the model predicts them with cross-entropy over all items. Scoring: the history (its last `max_len - 1` items)
plus a [mask] at the end; the state there, through the output head (dense, GELU, LayerNorm), is the user
representation, scored against the item table plus a per-item bias. The item table (`item_emb`, or a quadrant-2
item encoder) is shared by input and output; the [mask] vector is a parameter of its own.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec_cli.crm.base import CRM
from llmrec_cli.crm.configs import BERT4RecConfig
from llmrec_cli.crm.sequential import left_pad, length_batches, training_windows
from llmrec_cli.registry import register_crm


@register_crm("bert4rec", schema=BERT4RecConfig)
class BERT4Rec(CRM):
    def __init__(self, cfg, n_users: int, n_items: int):
        super().__init__(cfg, n_users, n_items)
        h = cfg.hidden
        self.item_emb = nn.Embedding(n_items + 1, h, padding_idx=0)
        self.mask_emb = nn.Parameter(torch.randn(h) * 0.02)
        self.pos_emb = nn.Embedding(cfg.max_len, h)
        self.emb_norm = nn.LayerNorm(h)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(h, cfg.heads, dim_feedforward=4 * h, dropout=cfg.dropout,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h))
        self.out_bias = nn.Parameter(torch.zeros(n_items + 1))
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self._windows: list[np.ndarray] = []
        self._window_users = np.zeros(0, dtype=np.int64)

    def encode(self, seq: torch.Tensor, masked: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Head outputs [n, L, h] for left-padded sequences [n, L]; MASKED [n, L] marks [mask] positions."""
        L = seq.shape[1]
        pos = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=seq.device)
        x = F.embedding(seq, table, padding_idx=0)
        x = torch.where(masked[..., None], self.mask_emb.to(x.dtype), x) + self.pos_emb(pos)[None]
        x = self.emb_dropout(self.emb_norm(x))
        pad = (seq == 0) & ~masked
        return self.head(self.encoder(x, src_key_padding_mask=pad))

    def setup(self, data) -> None:
        self._windows, self._window_users = training_windows(data, self.cfg.max_len, self.cfg.max_len)

    def train_epoch(self, data, optimizer, rng: np.random.Generator, progress: bool) -> float:
        dev = self.device
        total, count = 0.0, 0
        lengths = np.array([len(w) for w in self._windows])
        for idx in length_batches(lengths, self.cfg.batch_size, rng):
            batch = [self._windows[i] for i in idx]
            width = max(len(w) for w in batch)
            seq = left_pad(batch, width)
            real = seq > 0
            masked = (rng.random(seq.shape) < self.cfg.mask_prob) & real
            none = ~masked.any(1)  # at least one masked item per window: the last one
            masked[none, width - 1] = True
            seq_t, masked_t = torch.as_tensor(seq, device=dev), torch.as_tensor(masked, device=dev)
            table = self.item_table()
            states = self.add_user_offset(self.encode(seq_t, masked_t, table), self._window_users[idx])
            logits = states[masked_t] @ table.T + self.out_bias
            logits[:, 0] = -torch.inf  # padding is never a target
            loss = F.cross_entropy(logits, seq_t[masked_t])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = int(masked.sum())
            total += loss.item() * n
            count += n
        return total / max(count, 1)

    def user_embeddings(self, users, histories) -> torch.Tensor:
        """[n, h]: the head output at a [mask] appended after the last `max_len - 1` history items."""
        keep = self.cfg.max_len - 1
        width = max(1, min(keep, max((len(h) for h in histories), default=1))) + 1
        seq = np.zeros((len(histories), width), dtype=np.int64)
        seq[:, :-1] = left_pad([np.asarray(h)[-keep:] if keep else np.zeros(0, np.int64) for h in histories],
                               width - 1)
        masked = np.zeros_like(seq, dtype=bool)
        masked[:, -1] = True
        seq_t, masked_t = torch.as_tensor(seq, device=self.device), torch.as_tensor(masked, device=self.device)
        return self.add_user_offset(self.encode(seq_t, masked_t, self.item_table())[:, -1], users)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_table()

    @torch.no_grad()
    def score(self, users, histories, items):
        h = self.user_embeddings(users, histories)
        table = self.item_table()
        if items is None:
            return h @ table.T + self.out_bias
        it_idx = torch.as_tensor(items, dtype=torch.long, device=self.device)
        return torch.einsum("nd,ncd->nc", h, F.embedding(it_idx, table)) + self.out_bias[it_idx]
