"""The evaluator with tiny fake methods (no torch): sampled / full / pointwise protocols, pessimistic ranks,
history masking, batching, metric names and the per-user and prediction frames."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from llmrec_cli.config.schema import EvalConfig
from llmrec_cli.data.candidates import build_plan
from llmrec_cli.data.prepare import SPLITS, prepare
from llmrec_cli.data.sources.synthetic import SyntheticConfig, load_synthetic
from llmrec_cli.eval.evaluator import Evaluator
from llmrec_cli.methods.base import Method

N_NEG, N_PW = 9, 2


@pytest.fixture(scope="module")
def data():
    raw = load_synthetic(SyntheticConfig(name="synthetic", loader="synthetic", num_users=30, num_items=40,
                                         min_len=5, max_len=12, data_seed=1))
    d = prepare(raw, {"name": "synthetic", "loader": "synthetic", "kcore": 0, "min_rating": None,
                      "min_user_interactions": 3})
    assert d.n_users % 7 != 0  # the last batch is a partial one
    return d


def make_plan(data, **kw):
    s = {"seed": 0, "num_negatives": N_NEG, "negative_sampling": "uniform", "pointwise_negatives": N_PW,
         "like_threshold": None, "max_users": None}
    s.update(kw)
    return build_plan(data, s)


@pytest.fixture(scope="module")
def plan(data):
    return make_plan(data)


def eval_cfg(**kw):
    cfg = OmegaConf.structured(EvalConfig)
    cfg.batch_size = 7
    cfg.ks = [1, 5, 10]
    cfg.save_full_topk = 5
    for k, v in kw.items():
        cfg[k] = v
    return cfg


class Fake(Method):
    """Records every call; subclasses define `_scores(split, users, items)`."""

    score_kind = "score"

    def __init__(self, data):
        super().__init__(None, None)
        self.fit(data)
        self.calls = []

    def score(self, split, users, items):
        users, items = np.asarray(users), np.asarray(items)
        assert items.ndim == 2 and items.shape[0] == len(users)
        self.calls.append((split, tuple(int(u) for u in users), items.shape))
        return self._scores(split, users, items)


class Oracle(Fake):
    """Cheats: the true target of `split` scores 1, everything else less."""

    score_kind = "probability"

    def _scores(self, split, users, items):
        targets = np.array([self.data.target(int(u), split) for u in users])
        rng = np.random.default_rng(len(self.calls))
        return np.where(items == targets[:, None], 1.0, rng.uniform(0.0, 0.5, items.shape))


class Constant(Fake):
    def _scores(self, split, users, items):
        return np.full(items.shape, 0.3)


class AllNaN(Fake):
    score_kind = "logit"

    def _scores(self, split, users, items):
        return np.full(items.shape, np.nan)


class WrongShape(Fake):
    def _scores(self, split, users, items):
        return np.zeros((items.shape[0], items.shape[1] + 1))


class Table(Fake):
    """A fixed random score per (user, item): ranks can be recomputed independently."""

    def __init__(self, data, seed=0):
        super().__init__(data)
        self.table = np.random.default_rng(seed).random((data.n_users, data.n_items + 1))

    def _scores(self, split, users, items):
        return self.table[users[:, None], items]


class HistoryFirst(Table):
    """History items on top, then the target, then everything else."""

    def _scores(self, split, users, items):
        out = super()._scores(split, users, items)
        for r, u in enumerate(users):
            out[r, np.isin(items[r], self.data.history(int(u), split))] = 100.0
            out[r, items[r] == self.data.target(int(u), split)] = 50.0
        return out


def non_history(data, u, split):
    """Items a full ranking of user u runs over: all items except the history, the target kept."""
    keep = np.ones(data.n_items + 1, dtype=bool)
    keep[0] = False
    keep[data.history(u, split)] = False
    keep[data.target(u, split)] = True
    return np.flatnonzero(keep)


# ---- protocols -----------------------------------------------------------------------------------------

def test_oracle_is_perfect(data, plan):
    res = Evaluator(data, plan, eval_cfg()).evaluate(Oracle(data))
    m = res.metrics
    for split in SPLITS:
        for proto in ("sampled", "full"):
            for k in (1, 5, 10):
                for name in ("hr", "ndcg", "mrr"):
                    assert m[f"{split}/{proto}/{name}_{k}"] == 1.0
            assert m[f"{split}/{proto}/n_users"] == data.n_users
        assert m[f"{split}/pointwise/auc"] == 1.0
        assert m[f"{split}/pointwise/n_samples"] == data.n_users * (1 + N_PW)
        assert m[f"{split}/pointwise/positive_rate"] == pytest.approx(1 / (1 + N_PW))
        assert m[f"{split}/pointwise/logloss"] < 0.5  # probabilities: target 1, negatives <= 0.5
    assert (res.per_user["rank"] == 1).all()


def test_constant_scores_get_the_pessimistic_worst_rank(data, plan):
    res = Evaluator(data, plan, eval_cfg()).evaluate(Constant(data))
    pu = res.per_user
    assert (pu.loc[pu["protocol"] == "sampled", "rank"] == 1 + N_NEG).all()
    for split in SPLITS:
        full = pu[(pu["protocol"] == "full") & (pu["split"] == split)]
        expected = [len(non_history(data, u, split)) for u in range(data.n_users)]
        assert full["rank"].tolist() == expected
        assert res.metrics[f"{split}/sampled/hr_5"] == 0.0
        assert res.metrics[f"{split}/sampled/ndcg_10"] == pytest.approx(1 / math.log2(N_NEG + 2))
        assert res.metrics[f"{split}/pointwise/auc"] == 0.5
        assert f"{split}/pointwise/logloss" not in res.metrics  # score_kind="score": no probabilities
    assert min(expected) > 10  # so full metrics at 10 are all 0
    assert res.metrics["test/full/hr_10"] == 0.0


def test_nan_scores_are_worst(data, plan):
    res = Evaluator(data, plan, eval_cfg()).evaluate(AllNaN(data))
    const = Evaluator(data, plan, eval_cfg()).evaluate(Constant(data))
    np.testing.assert_array_equal(res.per_user["rank"], const.per_user["rank"])
    assert res.metrics["valid/pointwise/auc"] == 0.5
    assert math.isfinite(res.metrics["valid/pointwise/logloss"])  # NaN logits count as the lowest score


def test_ranks_match_independent_computation(data):
    plan = make_plan(data, max_users=23)
    method = Table(data, seed=4)
    res = Evaluator(data, plan, eval_cfg()).evaluate(method)
    pu = res.per_user
    for split in SPLITS:
        p = plan[split]
        for row, u in enumerate(p.users):
            u = int(u)
            scores = method.table[u]
            t = data.target(u, split)
            sampled_rank = 1 + sum(scores[c] >= scores[t] for c in p.sampled[row] if c != t)
            full_rank = 1 + sum(scores[c] >= scores[t] for c in non_history(data, u, split) if c != t)
            got = pu[(pu["split"] == split) & (pu["user_id"] == data.user_ids[u])].set_index("protocol")["rank"]
            assert got["sampled"] == sampled_rank and got["full"] == full_rank
        for proto in ("sampled", "full"):
            ranks = pu.loc[(pu["split"] == split) & (pu["protocol"] == proto), "rank"].to_numpy()
            assert res.metrics[f"{split}/{proto}/mrr_10"] == pytest.approx(np.mean(np.where(ranks <= 10, 1 / ranks, 0)))
            assert res.metrics[f"{split}/{proto}/hr_5"] == pytest.approx(np.mean(ranks <= 5))
            assert res.metrics[f"{split}/{proto}/ndcg_10"] == pytest.approx(
                np.mean(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0)))
    assert set(pu["user_id"]) == {str(data.user_ids[u]) for u in plan["test"].users}
    # batching does not change anything
    big = Evaluator(data, plan, eval_cfg(batch_size=1000)).evaluate(Table(data, seed=4))
    assert big.metrics == res.metrics


def test_full_ranking_excludes_history(data, plan):
    res = Evaluator(data, plan, eval_cfg()).evaluate(HistoryFirst(data))
    assert (res.per_user["rank"] == 1).all()
    assert res.metrics["test/full/hr_1"] == 1.0 and res.metrics["valid/full/hr_1"] == 1.0


def test_full_ranking_keeps_a_repeated_target(data):
    """A target the user saw before (in its history) is still a candidate of the full ranking."""
    d = data
    u = 0
    seq = d.seq_items.copy()
    seq[d.offsets[u + 1] - 1] = seq[d.offsets[u]]  # test target = the user's first item
    d2 = dataclasses.replace(d, seq_items=seq)
    t = d2.target(u, "test")
    assert t in d2.history(u, "test")

    class TargetTop(Fake):
        def _scores(self, split, users, items):
            return np.where(items == np.array([self.data.target(int(x), split) for x in users])[:, None], 9.0, 0.0)

    res = Evaluator(d2, make_plan(d2), eval_cfg(save_full_topk=1)).evaluate(
        TargetTop(d2), splits=["test"], protocols=["full"], keep_predictions=True)
    pu = res.per_user
    assert pu.loc[pu["user_id"] == d2.user_ids[u], "rank"].item() == 1
    # the top-1 candidate written for that user is the target itself (no second copy, no other item)
    mine = res.predictions[res.predictions["user_id"] == d2.user_ids[u]]
    assert mine["item_id"].tolist() == [d2.item_ids[t]] and mine["is_target"].tolist() == [True]


# ---- interface ---------------------------------------------------------------------------------------------

def test_metric_names_and_protocol_selection(data, plan):
    res = Evaluator(data, plan, eval_cfg()).evaluate(Table(data))
    names = set(res.metrics)
    for name in ("valid/sampled/ndcg_10", "test/full/hr_10", "test/pointwise/auc", "valid/full/mrr_1",
                 "test/sampled/hr_5", "valid/pointwise/auc"):
        assert name in names
    assert not any(n.endswith("_20") for n in names)  # ks = [1, 5, 10]
    assert all(n.split("/")[0] in SPLITS and n.split("/")[1] in ("sampled", "full", "pointwise") for n in names)

    class NoFull(Table):
        supports_full = False

        def score_full(self, split, users):
            raise AssertionError("score_full must not be called")

    res = Evaluator(data, plan, eval_cfg()).evaluate(NoFull(data))
    assert not any("/full/" in n for n in res.metrics)
    assert set(res.per_user["protocol"]) == {"sampled"}
    only = Evaluator(data, plan, eval_cfg()).evaluate(Table(data), splits=["test"], protocols=["sampled"])
    assert {n.rsplit("/", 1)[0] for n in only.metrics} == {"test/sampled"}
    assert only.predictions is None


def test_wrong_shape_is_an_error(data, plan):
    for proto in ("sampled", "full", "pointwise"):
        with pytest.raises(RuntimeError, match="shape"):
            Evaluator(data, plan, eval_cfg()).evaluate(WrongShape(data), protocols=[proto])


def test_batches(data, plan):
    method = Table(data)
    Evaluator(data, plan, eval_cfg()).evaluate(method, splits=["valid"])
    # sampled, full, pointwise: ceil(n / 7) calls each, every user exactly once per protocol, in order
    n_batches = -(-data.n_users // 7)
    assert len(method.calls) == 3 * n_batches
    assert all(len(users) <= 7 for _, users, _ in method.calls)
    for k in range(3):
        calls = method.calls[k * n_batches:(k + 1) * n_batches]
        assert [u for _, users, _ in calls for u in users] == list(range(data.n_users))
    widths = {shape[1] for _, _, shape in method.calls}
    assert widths == {1 + N_NEG, data.n_items + 1, 1 + N_PW}
    assert {split for split, _, _ in method.calls} == {"valid"}


def test_logloss_follows_score_kind(data, plan):
    cfg = eval_cfg(protocols=["pointwise"])

    class Logit(Table):
        score_kind = "logit"

    class Prob(Table):
        score_kind = "probability"

    lab = plan["test"].pointwise_labels.ravel()
    logit = Evaluator(data, plan, cfg).evaluate(Logit(data), splits=["test"]).metrics
    prob = Evaluator(data, plan, cfg).evaluate(Prob(data), splits=["test"]).metrics
    scores = np.concatenate([Table(data).table[u][plan["test"].pointwise_items[r]]
                             for r, u in enumerate(plan["test"].users)])
    p = 1 / (1 + np.exp(-scores))
    assert logit["test/pointwise/logloss"] == pytest.approx(-np.mean(lab * np.log(p) + (1 - lab) * np.log(1 - p)))
    assert prob["test/pointwise/logloss"] == pytest.approx(
        -np.mean(lab * np.log(scores) + (1 - lab) * np.log(1 - scores)))
    assert logit["test/pointwise/auc"] == prob["test/pointwise/auc"]


def test_pointwise_labels_from_plan(data):
    plan = make_plan(data, like_threshold=5.0)
    res = Evaluator(data, plan, eval_cfg(protocols=["pointwise"])).evaluate(Oracle(data))
    labels = plan["test"].pointwise_labels
    target_labels = labels[plan["test"].pointwise_items == plan["test"].targets[:, None]]
    assert 0 < target_labels.sum() < data.n_users  # some targets disliked
    assert res.metrics["test/pointwise/positive_rate"] == pytest.approx(labels.mean())
    assert res.metrics["test/pointwise/auc"] < 1.0  # disliked targets are labelled 0 but scored top


# ---- frames ------------------------------------------------------------------------------------------------

def test_prediction_and_per_user_frames(data, plan):
    method = Table(data, seed=2)
    res = Evaluator(data, plan, eval_cfg(save_full_topk=5)).evaluate(method, keep_predictions=True)
    pred, pu = res.predictions, res.per_user
    assert list(pred.columns) == ["user_id", "split", "protocol", "item_id", "score", "is_target"]
    assert pred["is_target"].dtype == bool and pred["score"].dtype == np.float64
    assert set(pred["protocol"]) == {"sampled", "full", "pointwise"}

    ranking = pred[pred["protocol"] != "pointwise"]
    per_group = ranking.groupby(["user_id", "split", "protocol"])["is_target"].sum()
    assert len(per_group) == data.n_users * 2 * 2 and (per_group == 1).all()

    sampled = pred[pred["protocol"] == "sampled"]
    assert (sampled.groupby(["user_id", "split"]).size() == 1 + N_NEG).all()
    point = pred[pred["protocol"] == "pointwise"]
    assert (point.groupby(["user_id", "split"]).size() == 1 + N_PW).all()

    uidx = {str(x): u for u, x in enumerate(data.user_ids)}
    iidx = {str(x): i for i, x in enumerate(data.item_ids)}
    full = pred[pred["protocol"] == "full"]
    for (user, split), g in full.groupby(["user_id", "split"]):
        u = uidx[user]
        items = np.array([iidx[i] for i in g["item_id"]])
        np.testing.assert_allclose(g["score"], method.table[u, items])  # scores belong to their items
        cand = non_history(data, u, split)
        top5 = cand[np.argsort(-method.table[u, cand], kind="stable")[:5]]
        t = data.target(u, split)
        assert set(items.tolist()) == set(top5.tolist()) | {t}
        assert len(items) == len(set(items.tolist())) == 5 + (t not in top5)
        assert g.loc[g["is_target"], "item_id"].item() == data.item_ids[t]

    # per_user: one row per user, split and ranking protocol, ranks consistent with the predictions
    assert len(pu) == data.n_users * 2 * 2
    assert not pu.duplicated(["user_id", "split", "protocol"]).any()
    for col in ("user_id", "split", "protocol", "rank", "hr_1", "ndcg_5", "mrr_10"):
        assert col in pu.columns
    for (user, split), g in sampled.groupby(["user_id", "split"]):
        t_score = g.loc[g["is_target"], "score"].item()
        rank = pu[(pu["user_id"] == user) & (pu["split"] == split) & (pu["protocol"] == "sampled")]["rank"].item()
        assert rank == 1 + (g.loc[~g["is_target"], "score"] >= t_score).sum()


@pytest.mark.parametrize("cls", [HistoryFirst, AllNaN])
def test_full_predictions_never_include_history_or_padding(data, plan, cls):
    """save_full_topk larger than the number of candidates: only real candidates are written."""
    method = cls(data)
    res = Evaluator(data, plan, eval_cfg(save_full_topk=1000, protocols=["full"])).evaluate(
        method, keep_predictions=True)
    full = res.predictions
    assert "<pad>" not in set(full["item_id"])
    uidx = {str(x): u for u, x in enumerate(data.user_ids)}
    for (user, split), g in full.groupby(["user_id", "split"]):
        u = uidx[user]
        expected = {str(data.item_ids[i]) for i in non_history(data, u, split)}
        assert set(g["item_id"]) == expected and len(g) == len(expected)
        assert g["is_target"].sum() == 1
