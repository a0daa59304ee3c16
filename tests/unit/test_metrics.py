"""Ranking and pointwise metrics: hand-computed values, pessimistic ties, NaN handling, and cross-checks against
scikit-learn (AUC, log-loss) and ranx (NDCG / HR / MRR at K)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from llmrec_cli.eval import metrics as M

KS = (1, 5, 10, 20)


# ---- target_ranks ---------------------------------------------------------------------------------------

def test_ranks_hand_computed():
    scores = np.array([
        [0.9, 0.5, 0.7, 0.1],  # target col 1: 0.9 and 0.7 ahead -> rank 3
        [0.2, 0.3, 0.4, 0.5],  # target col 3: best -> rank 1
        [0.2, 0.3, 0.4, 0.5],  # target col 0: worst -> rank 4
        [-1.0, 5.0, 2.0, 3.0],  # target col 2: 5.0 and 3.0 ahead -> rank 3
    ])
    ranks = M.target_ranks(scores, np.array([1, 3, 0, 2]))
    assert ranks.tolist() == [3, 1, 4, 3]
    assert ranks.dtype.kind == "i"


def test_ranks_pessimistic_ties():
    n = 7
    equal = np.full((3, n), 0.25)
    assert M.target_ranks(equal, np.array([0, 3, 6])).tolist() == [n, n, n]
    # the target tied with one candidate and below one other: both count as ahead of it
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.5]])
    assert M.target_ranks(scores, np.array([0])).tolist() == [4]
    assert M.target_ranks(scores, np.array([3])).tolist() == [5]
    assert M.target_ranks(scores, np.array([1])).tolist() == [1]


def test_ranks_nan_is_lowest_score():
    nan = np.nan
    scores = np.array([
        [nan, 0.1, 0.2, 0.3],  # NaN target: below everything
        [0.1, nan, nan, nan],  # NaN candidates: below a finite target, even a negative-ish low one
        [-1e300, nan, nan, -np.inf],  # -inf candidate still below a finite target
        [nan, nan, nan, nan],  # all NaN: tie -> pessimistic last
        [-np.inf, nan, 1.0, 2.0],  # -inf target tied with NaN candidate: pessimistic
    ])
    ranks = M.target_ranks(scores, np.array([0, 0, 0, 2, 0]))
    assert ranks.tolist() == [4, 1, 1, 4, 4]
    # the input is not modified in place
    assert np.isnan(scores[0, 0])


def test_ranks_valid_mask():
    scores = np.array([
        [0.9, 0.8, 0.1, 0.7, 0.6],
        [0.9, 0.8, 0.1, 0.7, 0.6],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    valid = np.array([
        [False, False, True, True, True],  # target col 3: 0.9 and 0.8 masked out -> rank 1
        [True, False, True, True, True],  # target col 3: 0.9 still counts -> rank 2
        [True, True, False, False, False],  # ties with two valid columns only -> rank 3
    ])
    targets = np.array([3, 3, 4])
    assert M.target_ranks(scores, targets, valid).tolist() == [1, 2, 3]
    # without the mask every higher score counts
    assert M.target_ranks(scores, targets).tolist() == [3, 3, 5]
    # the target's own validity flag does not matter: it is never "ahead of itself"
    v2 = valid.copy()
    v2[0, 3] = False
    assert M.target_ranks(scores, targets, v2).tolist()[0] == 1


# ---- rank_metrics ---------------------------------------------------------------------------------------

def test_rank_metrics_hand_computed():
    ranks = np.array([1, 2, 3, 5, 6, 10, 11, 20, 21])
    out = M.rank_metrics(ranks, KS)
    assert set(out) == {f"{m}_{k}" for m in ("hr", "ndcg", "mrr") for k in KS}
    r3 = 2  # index of rank 3
    assert out["ndcg_10"][r3] == pytest.approx(0.5)  # 1 / log2(4)
    assert out["mrr_10"][r3] == pytest.approx(1 / 3)
    assert out["hr_10"][r3] == 1.0
    assert out["hr_1"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert out["ndcg_1"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert out["hr_5"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert out["hr_10"].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert out["hr_20"].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 0]
    np.testing.assert_allclose(out["ndcg_5"], [1, 1 / math.log2(3), 0.5, 1 / math.log2(6), 0, 0, 0, 0, 0])
    np.testing.assert_allclose(out["mrr_20"], [1, 1 / 2, 1 / 3, 1 / 5, 1 / 6, 1 / 10, 1 / 11, 1 / 20, 0])
    np.testing.assert_allclose(out["ndcg_20"][7], 1 / math.log2(21))
    for v in out.values():
        assert v.shape == ranks.shape and v.dtype == np.float64


# ---- AUC / log-loss -------------------------------------------------------------------------------------

def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(5, 300))
        labels = rng.integers(0, 2, n)
        labels[0], labels[1] = 0, 1  # both classes present
        scores = np.round(rng.normal(size=n) + 0.7 * labels, 1 if trial % 2 else 0)  # coarse: many ties
        assert M.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    # 2-D inputs (the evaluator passes [users, 1 + negatives]) are flattened
    labels = np.array([[1, 0, 0], [0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.9], [0.3, 0.3, 0.2]])
    assert M.auc(labels, scores) == pytest.approx(roc_auc_score(labels.ravel(), scores.ravel()))


def test_auc_hand_values_and_edge_cases():
    assert M.auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert M.auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert M.auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert M.auc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)  # one tie (0.5) + one win (1.0)
    assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.auc([0, 0], [0.1, 0.2]))
    # NaN scores count as the lowest score
    labels = np.array([1, 0, 1, 0, 0])
    with_nan = np.array([np.nan, 0.2, 0.9, np.nan, 0.4])
    low = np.where(np.isnan(with_nan), -1e9, with_nan)
    assert M.auc(labels, with_nan) == pytest.approx(roc_auc_score(labels, low))


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    labels[:2] = [0, 1]
    probs = rng.uniform(0.01, 0.99, 200)
    assert M.log_loss(labels, probs) == pytest.approx(sk_log_loss(labels, probs), rel=1e-12)
    # hand value: -(log 0.8 + log 0.75) / 2
    assert M.log_loss([1, 0], [0.8, 0.25]) == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2)
    # confident mistakes are clipped, not infinite
    worst = M.log_loss([1, 0], [0.0, 1.0])
    assert math.isfinite(worst) and worst == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert M.log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7), rel=1e-6)


def test_log_loss_nan_is_lowest_probability():
    # a NaN prediction counts as probability 0 (the lowest score), never as a NaN metric
    assert M.log_loss([1], [np.nan]) == pytest.approx(M.log_loss([1], [0.0]))
    assert M.log_loss([0, 1], [np.nan, 0.5]) == pytest.approx(M.log_loss([0, 1], [0.0, 0.5]))
    assert math.isfinite(M.log_loss([1, 0], M.sigmoid([np.nan, np.nan])))


def test_sigmoid():
    from scipy.special import expit

    x = np.array([-800.0, -30.0, -1.0, 0.0, 0.5, 30.0, 800.0])
    # tanh form: relative precision of tiny probabilities is lost, which the log-loss clip (1e-7) hides anyway
    np.testing.assert_allclose(M.sigmoid(x), expit(x), rtol=1e-12, atol=1e-15)
    assert M.sigmoid(0.0) == 0.5
    assert np.all(np.isfinite(M.sigmoid(x)))


# ---- cross-check against ranx ---------------------------------------------------------------------------

def test_rank_metrics_match_ranx():
    """Mean NDCG@K / HR@K (= recall@K) / MRR@K over random users, continuous scores (no ties), via ranx."""
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(2)
    n_users, n_cand = 60, 40
    scores = rng.normal(size=(n_users, n_cand))
    # spread the targets' ranks over 1..n_cand: some users get a boosted target
    targets = rng.integers(0, n_cand, n_users)
    scores[np.arange(n_users), targets] += rng.choice([0.0, 1.0, 3.0], n_users)
    assert len(np.unique(scores)) == scores.size  # no ties at all
    ranks = M.target_ranks(scores, targets)
    assert ranks.min() == 1 and ranks.max() > 20  # both ends of the cut-offs are exercised
    ours = {k: float(v.mean()) for k, v in M.rank_metrics(ranks, KS).items()}

    qrels = ranx.Qrels({f"u{u}": {f"i{targets[u]}": 1} for u in range(n_users)})
    run = ranx.Run({f"u{u}": {f"i{c}": float(scores[u, c]) for c in range(n_cand)} for u in range(n_users)})
    names = [f"{m}@{k}" for k in KS for m in ("ndcg", "hit_rate", "recall", "mrr")]
    theirs = ranx.evaluate(qrels, run, names, make_comparable=True)
    for k in KS:
        assert ours[f"ndcg_{k}"] == pytest.approx(theirs[f"ndcg@{k}"], abs=1e-9)
        assert ours[f"hr_{k}"] == pytest.approx(theirs[f"hit_rate@{k}"], abs=1e-9)
        assert ours[f"hr_{k}"] == pytest.approx(theirs[f"recall@{k}"], abs=1e-9)
        assert ours[f"mrr_{k}"] == pytest.approx(theirs[f"mrr@{k}"], abs=1e-9)
