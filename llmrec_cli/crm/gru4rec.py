"""GRU4Rec (Hidasi et al., ICLR 2016) as the P5/TIGER tables run it: a GRU over the item sequence, trained like
SASRec (next item at every position, `crm.loss=ce` over all items by default, or `bce` with sampled negatives).

Embedding -> dropout -> GRU (`crm.layers` x `crm.gru_hidden`) -> linear back to the embedding size; the item
table is shared by input and output (`item_emb`, or a quadrant-2 item encoder). Sequences arrive left-padded;
they are rotated to the right-padded layout a packed GRU needs and back, so padding never enters the recurrence
and a user's scores do not depend on the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from llmrec_cli.crm.configs import GRU4RecConfig
from llmrec_cli.crm.sequential import SequentialCRM
from llmrec_cli.registry import register_crm


def rotate_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Row r of X ([n, L] or [n, L, d]) rotated left by SHIFT[r] positions."""
    L = x.shape[1]
    idx = (torch.arange(L, device=x.device)[None] + shift[:, None]) % L
    if x.dim() == 3:
        idx = idx[..., None].expand(-1, -1, x.shape[2])
    return x.gather(1, idx)


@register_crm("gru4rec", schema=GRU4RecConfig)
class GRU4Rec(SequentialCRM):
    def __init__(self, cfg, n_users: int, n_items: int):
        super().__init__(cfg, n_users, n_items)
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.hidden, cfg.gru_hidden, num_layers=cfg.layers, batch_first=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.out = nn.Linear(cfg.gru_hidden, cfg.hidden)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """States [n, L, hidden] of left-padded sequences [n, L] (zeros at padded positions)."""
        table = self.item_table() if table is None else table
        L = seq.shape[1]
        lengths = (seq > 0).sum(1)
        pad = L - lengths  # left padding per row: rotate it to the right for packing
        x = self.emb_dropout(F.embedding(rotate_rows(seq, pad), table, padding_idx=0))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=L)
        return rotate_rows(self.out(states), (L - pad) % L) * (seq > 0)[..., None]
