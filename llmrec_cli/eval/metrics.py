"""Ranking and pointwise metrics, per user, in NumPy.

Ties never flatter a model: a target tied with a candidate ranks below it (pessimistic rank). A NaN score
counts as the lowest possible score. Ranks are 1-based; metrics at K are 0 when the rank is beyond K.
Under leave-one-out (one target per user) Recall@K equals HR@K.
"""
from __future__ import annotations

import numpy as np


def _clean(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(scores), -np.inf, scores)


def target_ranks(scores: np.ndarray, target_col: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pessimistic 1-based rank of `scores[i, target_col[i]]` among the columns where `valid[i]` is True."""
    scores = _clean(scores)
    rows = np.arange(scores.shape[0])
    t = scores[rows, target_col][:, None]
    ahead = scores >= t
    if valid is not None:
        ahead &= valid
    ahead[rows, target_col] = False
    return 1 + ahead.sum(axis=1)


def rank_metrics(ranks: np.ndarray, ks=(1, 5, 10, 20)) -> dict[str, np.ndarray]:
    """Per-user hr_K, ndcg_K and mrr_K for one relevant item per user."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"hr_{k}"] = hit.astype(np.float64)
        out[f"ndcg_{k}"] = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
        out[f"mrr_{k}"] = np.where(hit, 1.0 / ranks, 0.0)
    return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties); NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = _clean(np.asarray(scores).ravel())
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # average 1-based rank of each tie group
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def row_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-row ROC AUC [n] (average ranks for ties, NaN scores lowest); NaN for rows with only one class.

    The mean over rows is the group AUC (GAUC) of per-user evaluation."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    scores = _clean(scores)
    if labels.size == 0:
        return np.zeros(len(labels), dtype=np.float64)
    ranks = rankdata(scores, axis=1, method="average")
    n_pos, n_neg = labels.sum(axis=1), (~labels).sum(axis=1)
    u = (ranks * labels).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities clipped to [eps, 1 - eps], NaN counts as 0 (the lowest score)."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    probs = np.clip(np.where(np.isnan(probs), 0.0, probs), eps, 1 - eps)
    return float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))
