"""Shared plumbing of LLM methods: load the backbone once, build the scorer, the optional CRM pre-filter, and
account for cost.

`candidates=crm_topk` (quadrants 3/4, filter-then-rerank): a CRM (trained in-line, or `crm.from_run=<id>`)
retrieves its top `candidates.k` unseen items per user; `score_full` lets the LLM reorder those and keeps the
CRM's order below them, so the evaluator's `full` protocol measures the two-stage system (a target the CRM did
not retrieve keeps its CRM rank, as in LlamaRec). The LLM cannot inherit the pre-filter's order: an
order-sensitive scorer sees the top k in `eval.permutations` seeded orders independent of the CRM's scores
(`llmrec_cli.eval.orders`), and items the LLM scores equally stay tied (the evaluator then ranks a tied target
below), instead of being broken by CRM order. The sampled and pointwise protocols still score the shared
candidates with the LLM alone. The pre-filter is saved as `crm.pt` with the checkpoint.

Cost figures (logged with the final metrics): `cost/load_seconds`, `cost/score_seconds`, `cost/tokens`
(processed by the LLM), `cost/users_per_second`, `cost/peak_gpu_mb`, and `cost/gpu_seconds` on CUDA.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from llmrec_cli.methods.base import Method


class LLMMethod(Method):
    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.loaded = None
        self.scorer = None
        self.endpoint = None  # model=endpoint: llm.endpoint.Endpoint
        self.prefilter = None  # the CRM of candidates=crm_topk
        self.load_dir: Path | None = None  # set by `load`: the checkpoint folder being restored
        self._cost = {"cost/load_seconds": 0.0, "cost/score_seconds": 0.0}
        self._users_scored = 0

    @property
    def tokenizer(self):
        """The backbone's tokenizer; for an endpoint, approximate token counts (`llm.endpoint.ApproxTokenizer`)."""
        if self.loaded is not None:
            return self.loaded.tokenizer
        from llmrec_cli.llm.endpoint import ApproxTokenizer

        return ApproxTokenizer()

    def setup_endpoint(self) -> None:
        """`model=endpoint`: an OpenAI-compatible server instead of in-process weights (llm/endpoint.py)."""
        from llmrec_cli.llm.endpoint import Endpoint, EndpointScorer

        model_cfg = self.ctx.cfg.model
        self.endpoint = Endpoint(model_cfg)
        served = self.endpoint.check()["served"]
        self.scorer = EndpointScorer(self.endpoint)
        self.ctx.log_params({"endpoint.base_url": self.endpoint.base_url, "endpoint.model": self.endpoint.model,
                             "endpoint.served": ",".join(served[:5]), "endpoint.temperature": model_cfg.temperature,
                             "endpoint.seed": model_cfg.seed, "endpoint.cache": str(self.endpoint.cache.path),
                             "endpoint.cached_answers_at_start": len(self.endpoint.cache)})

    def setup_llm(self) -> None:
        import torch

        from llmrec_cli.llm.loading import describe, load_backbone
        from llmrec_cli.llm.scoring import Scorer

        t0 = time.perf_counter()
        model_cfg = self.ctx.cfg.model
        if model_cfg.get("kind") == "endpoint":
            self.setup_endpoint()
            self._cost["cost/load_seconds"] = time.perf_counter() - t0
            self.setup_candidates()
            return
        self.loaded = load_backbone(model_cfg, self.ctx.device)
        self._cost["cost/load_seconds"] = time.perf_counter() - t0
        self.ctx.log_params({f"llm.{k}": v for k, v in describe(self.loaded).items()})
        self.scorer = Scorer(self.loaded.model, self.loaded.tokenizer, self.ctx.device,
                             batch_size=int(self.cfg.batch_size), max_length=int(model_cfg.max_length))
        if self.ctx.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.setup_candidates()

    # ---- candidates=crm_topk ------------------------------------------------------------------------
    def setup_candidates(self) -> None:
        """The CRM pre-filter of `candidates=crm_topk`: from the checkpoint being loaded, else trained in-line or
        reused (`crm.from_run`). A no-op for `candidates=sampled`."""
        cands = self.ctx.cfg.get("candidates")
        if cands is None or cands.source != "crm_topk" or self.prefilter is not None:
            return
        from llmrec_cli.crm.reuse import CRM_FILE, component_crm, load_crm_file

        own = getattr(self, "crm", None)  # quadrant 1's own CRM (soft tokens) is also its pre-filter
        if own is not None:
            self.prefilter = own
        elif self.load_dir is not None and (Path(self.load_dir) / CRM_FILE).is_file():
            self.prefilter = load_crm_file(Path(self.load_dir), None, self.data, self.ctx.device)
        else:
            t0 = time.perf_counter()
            self.prefilter = component_crm(self.ctx, self.data)
            self._cost["cost/prefilter_seconds"] = time.perf_counter() - t0
        self.supports_full = True
        self.ctx.log_params({"candidates.prefilter": self.prefilter.cfg.name})

    def score_candidates(self, users, histories, items) -> np.ndarray:
        """The LLM's scores of candidate ITEMS; an order-sensitive scorer sees them in seeded orders."""
        if not self.order_sensitive:
            return np.asarray(self.score(users, histories, items), dtype=np.float64)
        from llmrec_cli.eval.orders import score_in_orders

        k = int(self.ctx.cfg.eval.get("permutations", 1) or 1)
        return score_in_orders(self.score, users, histories, items, self.ctx.seed, k)[0]

    def score_full(self, users, histories):
        """Filter-then-rerank over the catalogue: the LLM's order on the CRM's top k, the CRM's order below."""
        if self.prefilter is None:
            return super().score_full(users, histories)
        crm = self.prefilter.score(users, histories, None).float().cpu().numpy().astype(np.float64)
        k = min(int(self.ctx.cfg.candidates.k), self.data.n_items - max((len(h) for h in histories), default=0))
        top = self.prefilter.topk(users, histories, max(k, 1))
        llm = self.score_candidates(users, histories, top)
        return two_stage_scores(crm, top, llm)

    def save(self, path: Path) -> list[Path]:
        if self.prefilter is None:
            return []
        from llmrec_cli.crm.reuse import save_crm

        return [save_crm(self.prefilter, Path(path))]

    def setup(self, data) -> None:
        """Frozen LLM methods (quadrant 3): load the backbone, the pre-filter and the prompts; nothing is trained,
        so `fit` and `load` both only set up."""
        raise NotImplementedError(f"{type(self).__name__} implements fit/load itself")

    def fit(self, data):
        self.setup(data)
        return {}

    def load(self, path: Path, data) -> None:
        """A frozen method's checkpoint holds only the pre-filter (`crm.pt`): set up, reading it from PATH."""
        self.load_dir = Path(path)
        self.setup(data)

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
        prompts = getattr(self, "prompts", None)  # a PromptBuilder, once the method has built prompts
        if prompts is not None:
            out.update(prompts.stat_metrics())
        if self.scorer is not None:
            for key in ("truncated_prompts", "truncated_tokens"):
                out[f"prompt/scorer_{key}"] = float(self.scorer.stats.get(key, 0))
        if self.endpoint is not None:
            model_cfg = self.ctx.cfg.model
            out.update(self.endpoint.stats.metrics(model_cfg.get("price_per_1m_input"),
                                                   model_cfg.get("price_per_1m_output")))
            for key in ("truncated_prompts", "truncated_tokens"):
                out.pop(f"prompt/scorer_{key}", None)
        return out

    def provenance(self) -> dict[str, str]:
        return self.endpoint.stats.provenance() if self.endpoint is not None else {}


def two_stage_scores(crm: np.ndarray, top: np.ndarray, llm: np.ndarray) -> np.ndarray:
    """Catalogue scores [n, n_items + 1] of filter-then-rerank: the pre-filter's TOP items [n, k] above every
    other item, ordered among themselves by the LLM's scores LLM [n, k] (NaN lowest), the rest by CRM.

    Top items get their dense rank under the LLM (1..k, >= 1) and the rest CRM scores shifted below -1, so ties
    in the LLM's scores stay ties (the evaluator ranks a tied target below) and nothing of the CRM's order
    leaks into the top k."""
    from scipy.stats import rankdata

    out = crm - np.nanmax(np.where(np.isfinite(crm), crm, np.nan), axis=1, keepdims=True) - 1.0
    out = np.where(np.isnan(out), -np.inf, out)  # every CRM score <= -1
    tiers = rankdata(np.nan_to_num(np.asarray(llm, dtype=np.float64), nan=-np.inf), method="dense", axis=1)
    np.put_along_axis(out, top, tiers.astype(np.float64), axis=1)
    return out


def stack(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(r, dtype=np.float64) for r in rows]) if rows else np.zeros((0, 0))
