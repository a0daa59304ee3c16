"""Statistics for the comparison: summaries over seeds and paired tests on per-user metrics.

- Over seeds: n, mean, sample std (ddof=1) and the 95% confidence half-width t_{0.975, n-1} * std / sqrt(n)
  (Student t); with one run the std and the CI are NaN.
- Against a reference group: each user's metric is averaged over a group's seeds, users present in both
  groups (same split and protocol) are paired, and the pairs go to `scipy.stats.ttest_rel` or to a paired
  randomization test (`scipy.stats.permutation_test`, permutation_type="samples": random sign flips of the
  per-user differences; exact when 2^n is small).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

TESTS = ("ttest", "permutation", "none")
PER_USER_PROTOCOLS = ("full", "sampled")  # pointwise metrics (AUC) are not per user: no paired test


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
    """"test/full/ndcg_10" -> ("test", "full", "ndcg_10") when a per-user column can back it, else None."""
    parts = name.split("/")
    if len(parts) != 3 or parts[1] not in PER_USER_PROTOCOLS:
        return None
    return parts[0], parts[1], parts[2]


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


def paired_pvalue(frames_a: Sequence, frames_b: Sequence, metric: str, test: str = "ttest") -> tuple[float, int]:
    """(p, number of paired users) for one metric between two groups' per-user frames; (NaN, 0) if unpaired."""
    parsed = parse_metric(metric)
    if parsed is None or test == "none":
        return math.nan, 0
    a, b = user_means(frames_a, *parsed), user_means(frames_b, *parsed)
    if a is None or b is None:
        return math.nan, 0
    common = a.index.intersection(b.index)
    if len(common) == 0:
        return math.nan, 0
    return paired_test(a.loc[common].to_numpy(), b.loc[common].to_numpy(), test), len(common)
