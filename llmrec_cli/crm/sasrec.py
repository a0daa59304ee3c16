"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

`crm.loss=ce` (default) trains with cross-entropy over all items at every position; `crm.loss=bce` with the
original paper's sigmoid loss on the target and `crm.num_negatives` sampled items (the objective behind most
published SASRec tables, e.g. TIGER's Beauty baselines). Windows, batching, the losses and scoring are shared
with the other sequence models (`llmrec_cli.crm.sequential`). The item table is shared by input and output; it
is `item_emb`, or the output of a quadrant-2 item encoder (`CRM.set_item_encoder`). A user encoder's vector is
added to the hidden state of every position (the last one is the user representation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmrec_cli.crm.configs import SASRecConfig
from llmrec_cli.crm.sequential import SequentialCRM, left_pad
from llmrec_cli.registry import register_crm

__all__ = ["SASRec", "left_pad"]


@register_crm("sasrec", schema=SASRecConfig)
class SASRec(SequentialCRM):
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
