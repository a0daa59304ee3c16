"""Pop: score = number of training interactions of the item (the same ranking for every user)."""
from __future__ import annotations

import numpy as np
import torch

from llmrec_cli.crm.base import CRM, gather_or_all
from llmrec_cli.crm.configs import PopConfig
from llmrec_cli.registry import register_crm


@register_crm("pop", schema=PopConfig)
class Pop(CRM):
    trainable = False

    def __init__(self, cfg, n_users: int, n_items: int):
        super().__init__(cfg, n_users, n_items)
        self.register_buffer("counts", torch.zeros(n_items + 1))

    def setup(self, data) -> None:
        self.counts = torch.as_tensor(data.train_counts(), dtype=torch.float32, device=self.counts.device)

    def score(self, users, histories, items):
        return gather_or_all(self.counts.expand(len(histories), -1), items)

    def item_embeddings(self) -> torch.Tensor:
        return self.counts[:, None]

    def user_embeddings(self, users, histories) -> torch.Tensor:
        return torch.ones(len(histories), 1, device=self.counts.device)

    def train_epoch(self, data, optimizer, rng: np.random.Generator, progress: bool) -> float:
        return 0.0
