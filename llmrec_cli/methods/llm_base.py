"""Shared plumbing of LLM methods: load the backbone once, build the scorer, account for cost.

Cost figures (logged with the final metrics): `cost/load_seconds`, `cost/score_seconds`, `cost/tokens`
(processed by the LLM), `cost/users_per_second`, `cost/peak_gpu_mb`, and `cost/gpu_seconds` on CUDA.
"""
from __future__ import annotations

import time

import numpy as np

from llmrec_cli.methods.base import Method


class LLMMethod(Method):
    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.loaded = None
        self.scorer = None
        self._cost = {"cost/load_seconds": 0.0, "cost/score_seconds": 0.0}
        self._users_scored = 0

    def setup_llm(self) -> None:
        import torch

        from llmrec_cli.llm.loading import describe, load_backbone
        from llmrec_cli.llm.scoring import Scorer

        t0 = time.perf_counter()
        model_cfg = self.ctx.cfg.model
        self.loaded = load_backbone(model_cfg, self.ctx.device)
        self._cost["cost/load_seconds"] = time.perf_counter() - t0
        self.ctx.log_params({f"llm.{k}": v for k, v in describe(self.loaded).items()})
        self.scorer = Scorer(self.loaded.model, self.loaded.tokenizer, self.ctx.device,
                             batch_size=int(self.cfg.batch_size), max_length=int(model_cfg.max_length))
        if self.ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def timed(self, fn, n_users: int):
        """Run a scoring call, adding its wall time and user count to the cost figures."""
        t0 = time.perf_counter()
        out = fn()
        self._cost["cost/score_seconds"] += time.perf_counter() - t0
        self._users_scored += n_users
        return out

    def cost_summary(self) -> dict[str, float]:
        out = dict(self._cost)
        if self.scorer is not None:
            out["cost/tokens"] = float(self.scorer.stats.get("tokens", 0))
        seconds = out["cost/score_seconds"]
        out["cost/users_per_second"] = self._users_scored / seconds if seconds > 0 else float("nan")
        if self.ctx.device == "cuda":
            import torch

            out["cost/peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["cost/gpu_seconds"] = seconds + out["cost/load_seconds"]
        if self.loaded is not None:
            out["model/num_parameters"] = float(self.loaded.num_parameters)
        return out


def stack(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(r, dtype=np.float64) for r in rows]) if rows else np.zeros((0, 0))
