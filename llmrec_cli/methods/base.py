"""The method interface: fit on training data, score candidates. Methods never see targets or labels.

`fit(train)` gets a `TrainView` (llmrec_cli/data/views.py): the catalogue and each user's training
interactions, nothing held out; asking it for a valid/test target raises `LeakageError`. The evaluator then
asks the fitted method for scores of (user, candidate) pairs and hands it each user's history for the split
being scored (`histories[i]`: every interaction before that split's target), so a method never builds a
history from data that holds the targets.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrec_cli.data.views import TrainView


@dataclass
class RunContext:
    """What a method gets besides its config: seed, device, where to write, how to report."""

    cfg: Any  # the whole resolved run config (DictConfig)
    seed: int
    device: str
    output_dir: Path
    log_metrics: Callable[[dict[str, float], int], None] = lambda metrics, step: None
    log_params: Callable[[dict[str, Any]], None] = lambda params: None
    log_text: Callable[[str, str], None] = lambda text, artifact_file: None  # (text, path in the run)
    set_tags: Callable[[dict[str, Any]], None] = lambda tags: None  # e.g. lineage: crm_from_run=<run id>
    validate: Callable[[Method], dict[str, float]] | None = None  # valid-split metrics for early stopping
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def monitor_name(self, method: Method) -> str:
        """`eval.monitor`, with `full` replaced by `sampled` for methods that do not rank the full catalogue."""
        split, proto, metric = str(self.cfg.eval.monitor).split("/")
        if proto == "full" and not method.supports_full:
            proto = "sampled"
        return f"{split}/{proto}/{metric}"


class Method:
    """Base class. Subclasses set `score_kind` and implement `fit` and `score` (and may override `score_full`)."""

    #: What a score is: "probability" (in [0, 1]), "logit" (log-odds: its sigmoid is a probability, e.g. a
    #: Yes/No head) or "score" (only an order, e.g. a dot product). Log-loss is computed for the first two.
    score_kind = "score"
    #: Whether `score_full` is affordable (LLM rankers usually only score sampled candidates).
    supports_full = True
    #: Whether a candidate's score depends on the order the candidates are shown in (listwise prompts): the
    #: evaluator then shows them in `eval.permutations` seeded orders (llmrec_cli/eval/orders.py).
    order_sensitive = False

    def __init__(self, cfg, ctx: RunContext):
        self.cfg = cfg
        self.ctx = ctx
        self.data: TrainView | None = None

    def fit(self, data: TrainView) -> dict[str, float]:
        """Train on DATA, the training-only view. Returns summary numbers (epochs, best valid metric)."""
        self.data = data
        return {}

    def score(self, users: np.ndarray, histories: list[np.ndarray], items: np.ndarray) -> np.ndarray:
        """Scores [n_users, n_candidates] for candidate `items[i]` of `users[i]`, whose history (every
        interaction before the target of the split being scored) is `histories[i]`; higher is better."""
        raise NotImplementedError

    def score_full(self, users: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """Scores [n_users, n_items + 1] over the whole catalogue (column 0 is padding)."""
        assert self.data is not None
        items = np.broadcast_to(np.arange(self.data.n_items + 1), (len(users), self.data.n_items + 1))
        return self.score(users, histories, np.ascontiguousarray(items))

    def cost_summary(self) -> dict[str, float]:
        """Cost figures logged with the final metrics (LLM methods: seconds, tokens, users/s, GPU memory)."""
        return {}

    def provenance(self) -> dict[str, str]:
        """Tags set once the run is evaluated: where its answers came from (an endpoint's served model)."""
        return {}

    def save(self, path: Path) -> list[Path]:
        """Write what `load` needs to rebuild the fitted method; returns the files written."""
        return []

    def load(self, path: Path, data: TrainView) -> None:
        self.data = data
