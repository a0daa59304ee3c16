"""The order in which candidates are shown to an order-sensitive scorer (a listwise LLM prompt).

A listwise prompt lists its candidates, and LLMs favour some positions (LLMRank, Hou et al. 2024), so the
order must carry no information: not the plan's, not a pre-filter's ranking, not any score. Every
order-sensitive scoring call therefore goes through `score_in_orders`, which shows each user's candidates in
K seeded orders and averages the K scores per candidate (`eval.permutations`, LLMRank's bootstrapping
control for position bias). An order is a function of (seed, user, the set of candidates, k) only.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np

ORDER_STREAM = 7


def presentation_orders(seed: int, users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """[k, n, c] column permutations: `take_along_axis(items, out[j], 1)` is order j of each row's candidates.

    Order j of a row is a seeded shuffle of its candidates in id order, seeded by (seed, user, candidate ids),
    so the same candidate set comes out in the same order however it came in."""
    items = np.asarray(items, dtype=np.int64)
    n, c = items.shape
    out = np.zeros((k, n, c), dtype=np.int64)
    for r in range(n):
        by_id = np.argsort(items[r], kind="stable")
        key = zlib.crc32(items[r][by_id].tobytes())
        rng = np.random.default_rng([int(seed), int(users[r]), key, ORDER_STREAM])
        for j in range(k):
            out[j, r] = by_id[rng.permutation(c)]
    return out


def score_in_orders(score: Callable, users: np.ndarray, histories: Sequence[np.ndarray], items: np.ndarray,
                    seed: int, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(mean scores [n, c], scores per order [k, n, c]) of SCORE(users, histories, shown items), where the
    candidates of each row are shown in `k` seeded orders; scores come back aligned with ITEMS' columns."""
    items = np.asarray(items)
    orders = presentation_orders(seed, users, items, max(1, int(k)))
    per_order = np.zeros(orders.shape, dtype=np.float64)
    for j, perm in enumerate(orders):
        shown = np.take_along_axis(items, perm, axis=1)
        scores = np.asarray(score(users, histories, np.ascontiguousarray(shown)), dtype=np.float64)
        if scores.shape != items.shape:
            raise RuntimeError(f"score returned shape {scores.shape}, expected {items.shape}")
        np.put_along_axis(per_order[j], perm, scores, axis=1)
    return per_order.mean(axis=0), per_order
