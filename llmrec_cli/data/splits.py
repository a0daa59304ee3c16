"""The two splits as positions in each user's chronological sequence (see `llmrec_cli.data.prepare`).

`split_positions` gives per user the training prefix length and the valid/test target positions (-1: none);
`split_settings` validates `dataset.split` / `dataset.split_time` (used at compose time and by `prepare`).
"""
from __future__ import annotations

import numpy as np

from llmrec_cli.errors import ConfigError

SPLIT_METHODS = ("loo", "temporal")


def split_positions(offsets: np.ndarray, times: np.ndarray, method: str, split_time=(0.8, 0.9)):
    """(train_end, valid_pos, test_pos, info) per user for split METHOD (see the module docstring)."""
    lengths = np.diff(offsets)
    if method == "loo":
        return lengths - 2, lengths - 2, lengths - 1, {"split": "loo"}
    q_valid, q_test = (float(q) for q in split_time)
    t_valid, t_test = (int(t) for t in np.quantile(times, [q_valid, q_test], method="lower"))
    n = len(lengths)
    train_end, valid_pos, test_pos = (np.zeros(n, dtype=np.int64) for _ in range(3))
    for u in range(n):
        t = times[offsets[u] : offsets[u + 1]]  # sorted: sequences are chronological
        a, b = int(np.searchsorted(t, t_valid, "left")), int(np.searchsorted(t, t_test, "left"))
        train_end[u] = a
        valid_pos[u] = a if a < b else -1
        test_pos[u] = b if b < len(t) else -1
    info = {"split": "temporal", "split_time": [q_valid, q_test], "t_valid": t_valid, "t_test": t_test}
    return train_end, valid_pos, test_pos, info


def split_stats(train_end, valid_pos, test_pos) -> dict:
    """Counts per split: training interactions and evaluated users (as `PreparedData.eval_users`)."""
    warm = train_end >= 1
    return {"train_interactions": int(train_end.sum()), "users_with_training": int(warm.sum()),
            "valid_users": int(((valid_pos >= 1) & warm).sum()), "test_users": int(((test_pos >= 1) & warm).sum())}


def split_settings(dataset_cfg) -> tuple[str, tuple[float, float]]:
    """(`dataset.split`, `dataset.split_time`), validated: a ConfigError naming the key and the fix."""
    method = str(dataset_cfg.get("split") or "loo")
    if method not in SPLIT_METHODS:
        raise ConfigError(f"dataset.split={method} is not one of {', '.join(SPLIT_METHODS)}")
    qs = tuple(float(q) for q in (dataset_cfg.get("split_time") or (0.8, 0.9)))
    if len(qs) != 2 or not 0.0 < qs[0] < qs[1] < 1.0:
        raise ConfigError(f"dataset.split_time={list(qs)} must be two quantiles 0 < valid < test < 1, "
                          f"e.g. dataset.split_time=[0.8,0.9]")
    return method, qs
