"""Statistics for the comparison: summaries over seeds, paired tests on per-user metrics, their correction.

- Over seeds: n, mean, sample std (ddof=1) and the 95% confidence half-width t_{0.975, n-1} * std / sqrt(n)
  (Student t); with one run the std and the CI are NaN.
- Against a reference group: a user's metric pairs only with the same user's metric measured on the same
  candidate set (`candidate_set_hash`; it differs between seeds). `paired_pvalue` refuses (LlmrecError) frames
  of two sides that were not measured on the same candidate sets. Per shared candidate set, users present on
  both sides (same split and protocol; reruns of one set averaged) are paired; each user's pair is averaged over
  the shared sets, and the pairs go to `scipy.stats.ttest_rel` or to a paired randomization test
  (`scipy.stats.permutation_test`, permutation_type="samples": random sign flips of the per-user differences;
  exact when 2^n is small).
- Per-user metrics exist for the `full` and `sampled` rank metrics and for `{split}/pointwise/gauc` (each
  user's AUC, column `gauc` of the `pointwise` rows). `{split}/pointwise/auc` and `{split}/like/auc` are pooled
  over all samples: they have no per-user value and get no paired test.
- Many tests make false positives likely: `adjust_pvalues` applies Holm (family-wise error) or
  Benjamini-Hochberg (false discovery rate) through `statsmodels.stats.multitest.multipletests`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from llmrec_cli.errors import ConfigError, LlmrecError

TESTS = ("ttest", "permutation", "none")
#: Protocols with per-user rows in per_user_metrics.parquet -> the metrics they back (None: every rank metric,
#: the column named like the metric; a dict: metric name -> column).
PER_USER_METRICS: dict[str, dict[str, str] | None] = {"full": None, "sampled": None, "pointwise": {"gauc": "gauc"}}
PER_USER_PROTOCOLS = tuple(PER_USER_METRICS)
#: --correction value -> `multipletests` method (None: the raw p-values are kept).
CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "none": None}
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no"}


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict:
    """{"n", "mean", "std", "ci95"} of the finite values (NaN where undefined)."""
    import numpy as np

    x = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "ci95": ci_halfwidth(x, confidence)}


def ci_halfwidth(values: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of the mean; NaN for fewer than two values."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def parse_metric(name: str) -> tuple[str, str, str] | None:
    """(split, protocol, per-user column) when a per-user column can back the metric, else None:
    "test/full/ndcg_10" -> ("test", "full", "ndcg_10"), "test/pointwise/gauc" -> ("test", "pointwise", "gauc");
    the pooled "test/pointwise/auc" and "test/like/auc" -> None."""
    parts = name.split("/")
    if len(parts) != 3 or parts[1] not in PER_USER_METRICS:
        return None
    split, protocol, metric = parts
    columns = PER_USER_METRICS[protocol]
    if columns is None:
        return split, protocol, metric
    return (split, protocol, columns[metric]) if metric in columns else None


def user_means(frames: Sequence, split: str, protocol: str, col: str):
    """Each user's metric averaged over a group's runs (their per_user_metrics frames); None if absent."""
    import pandas as pd

    parts = [f.loc[(f["split"] == split) & (f["protocol"] == protocol), ["user_id", col]]
             for f in frames if f is not None and col in f.columns]
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    both = pd.concat(parts, ignore_index=True)
    both["user_id"] = both["user_id"].astype(str)
    return both.groupby("user_id")[col].mean()


def paired_test(a: Sequence[float], b: Sequence[float], test: str = "ttest", n_resamples: int = 9999,
                seed: int = 0) -> float:
    """Two-sided p-value of a paired test on a[i] vs b[i]; 1.0 when every pair is equal, NaN if n < 2."""
    import numpy as np
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    if len(a) < 2:
        return math.nan
    if np.all(a == b):
        return 1.0
    if test == "ttest":
        return float(stats.ttest_rel(a, b).pvalue)
    if test == "permutation":
        def mean_diff(x, y, axis=-1):
            return np.mean(x - y, axis=axis)

        kwargs = dict(permutation_type="samples", n_resamples=n_resamples, alternative="two-sided",
                      vectorized=True, batch=max(1, 2_000_000 // len(a)))
        try:
            res = stats.permutation_test((a, b), mean_diff, rng=np.random.default_rng(seed), **kwargs)
        except TypeError:  # scipy < 1.15 names the generator random_state
            res = stats.permutation_test((a, b), mean_diff, random_state=seed, **kwargs)
        return float(res.pvalue)
    raise ValueError(f"unknown test {test!r}; use one of {', '.join(TESTS)}")


def require_same_candidate_sets(sets_a: Sequence, sets_b: Sequence) -> list[str]:
    """The distinct candidate sets, sorted, when both sides were measured on exactly the same ones (reruns of one
    set may repeat); otherwise a one-line LlmrecError naming a candidate_set_hash of each side. A missing hash
    (None) matches nothing."""
    a, b = set(sets_a), set(sets_b)
    if a == b and None not in a:
        return sorted(a)
    only_a = sorted(map(str, a - b)) or sorted(map(str, a)) or ["(none)"]
    only_b = sorted(map(str, b - a)) or sorted(map(str, b)) or ["(none)"]
    raise LlmrecError(f"refusing to pair per-user metrics of different candidate sets: candidate_set_hash "
                      f"{only_a[0]} vs {only_b[0]}; pair only runs with equal candidate_set_hash")


def paired_pvalue(frames_a: Sequence, frames_b: Sequence, metric: str, test: str = "ttest", *,
                  sets_a: Sequence, sets_b: Sequence) -> tuple[float, int, int]:
    """(p, paired users, candidate sets used) for one metric between two groups' per-user frames.

    `sets_a[i]` is the candidate_set_hash of the run behind `frames_a[i]` (likewise b). Both sides must hold the
    same candidate sets (`require_same_candidate_sets` raises otherwise): users pair within a candidate set only.
    (NaN, 0, 0) when the metric has no per-user column, the test is "none" or no user pairs.
    """
    import pandas as pd

    if len(sets_a) != len(frames_a) or len(sets_b) != len(frames_b):
        raise ValueError("one candidate_set_hash per per-user frame is needed")
    shared = require_same_candidate_sets(sets_a, sets_b)
    parsed = parse_metric(metric)
    if parsed is None or test == "none":
        return math.nan, 0, 0
    parts_a, parts_b = [], []
    for cs in shared:
        a = user_means([f for f, s in zip(frames_a, sets_a, strict=True) if s == cs], *parsed)
        b = user_means([f for f, s in zip(frames_b, sets_b, strict=True) if s == cs], *parsed)
        common = a.index.intersection(b.index) if a is not None and b is not None else []
        if len(common):
            parts_a.append(a.loc[common])
            parts_b.append(b.loc[common])
    if not parts_a:
        return math.nan, 0, 0
    a = pd.concat(parts_a).groupby(level=0).mean()
    b = pd.concat(parts_b).groupby(level=0).mean().loc[a.index]
    return paired_test(a.to_numpy(), b.to_numpy(), test), len(a), len(parts_a)


def check_correction(correction: str) -> str:
    """The --correction value when known; otherwise a one-line ConfigError naming the allowed values."""
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown --correction {correction!r}; use one of {', '.join(CORRECTIONS)}")
    return correction


def adjust_pvalues(pvalues: Sequence[float], correction: str = "holm") -> list[float]:
    """The family's p-values adjusted by Holm ("holm") or Benjamini-Hochberg ("bh") through statsmodels'
    `multipletests`, or unchanged ("none"); NaN entries stay NaN and are not counted in the family."""
    method = CORRECTIONS[check_correction(correction)]
    out = [float(p) for p in pvalues]
    finite = [i for i, p in enumerate(out) if math.isfinite(p)]
    if method is None or not finite:
        return out
    from statsmodels.stats.multitest import multipletests

    adjusted = multipletests([out[i] for i in finite], method=method)[1]
    for i, p in zip(finite, adjusted, strict=True):
        out[i] = float(p)
    return out
