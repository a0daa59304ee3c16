"""Quadrant `baseline`: a conventional recommender alone (`crm=pop|bpr|sasrec`)."""
from __future__ import annotations

from pathlib import Path

from llmrec_cli.crm.base import CRM, fit_crm
from llmrec_cli.crm.reuse import build_crm, load_crm_file, save_crm
from llmrec_cli.methods.base import Method
from llmrec_cli.methods.configs import BaselineConfig
from llmrec_cli.registry import register_method


class CRMMethod(Method):
    """Adapts a CRM to the method interface; also the way later quadrants evaluate a CRM component."""

    score_kind = "score"  # dot products / counts: an order, not a probability (no log-loss)

    def __init__(self, cfg, ctx, crm: CRM | None = None):
        super().__init__(cfg, ctx)
        self.crm = crm

    def score(self, users, histories, items):
        return self.crm.score(users, histories, items).float().cpu().numpy()

    def score_full(self, users, histories):
        return self.crm.score(users, histories, None).float().cpu().numpy()

    def save(self, path: Path) -> list[Path]:
        return [save_crm(self.crm, Path(path))]

    def load(self, path: Path, data) -> None:
        self.data = data
        self.crm = load_crm_file(Path(path), self.ctx.cfg.crm, data, self.ctx.device)


@register_method("baseline", quadrant="baseline", schema=BaselineConfig)
class Baseline(CRMMethod):
    def fit(self, data):
        self.data = data
        self.crm = build_crm(self.ctx.cfg.crm, data.n_users, data.n_items, self.ctx.device)
        return fit_crm(self.crm, data, self.ctx, lambda: self.ctx.validate(self), self.ctx.monitor_name(self))
