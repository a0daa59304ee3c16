"""The evaluator with tiny fake methods (no torch): sampled / full / pointwise / like protocols, pessimistic
ranks, history masking, the histories handed to `score`, presentation orders, batching, metric names and the
per-user and prediction frames."""
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
         "like_threshold": 4.0, "max_users": None}
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
    """Fits on the training view; records every call; subclasses define `_scores(users, histories, items)`.

    `self.full` is the whole prepared data: a test fake may cheat with it on purpose (the oracle), a method
    never gets it."""

    score_kind = "score"

    def __init__(self, data):
        super().__init__(None, None)
        self.full = data
        self.fit(data.train_view())
        self.calls = []

    def score(self, users, histories, items):
        users, items = np.asarray(users), np.asarray(items)
        assert items.ndim == 2 and items.shape[0] == len(users) == len(histories)
        self.calls.append((tuple(int(u) for u in users), items.shape, [np.asarray(h).copy() for h in histories]))
        return self._scores(users, histories, items)

    def next_item(self, u, history):
        """The item right after HISTORY in u's sequence: the target of the split being scored."""
        return int(self.full.sequence(int(u))[len(history)])


class Oracle(Fake):
    """Cheats: the true target of the split scores 1, everything else less."""

    score_kind = "probability"

    def _scores(self, users, histories, items):
        targets = np.array([self.next_item(u, h) for u, h in zip(users, histories, strict=True)])
        rng = np.random.default_rng(len(self.calls))
        return np.where(items == targets[:, None], 1.0, rng.uniform(0.0, 0.5, items.shape))


class Constant(Fake):
    def _scores(self, users, histories, items):
        return np.full(items.shape, 0.3)


class AllNaN(Fake):
    score_kind = "logit"

    def _scores(self, users, histories, items):
        return np.full(items.shape, np.nan)


class WrongShape(Fake):
    def _scores(self, users, histories, items):
        return np.zeros((items.shape[0], items.shape[1] + 1))


class Table(Fake):
    """A fixed random score per (user, item): ranks can be recomputed independently."""

    def __init__(self, data, seed=0):
        super().__init__(data)
        self.table = np.random.default_rng(seed).random((data.n_users, data.n_items + 1))

    def _scores(self, users, histories, items):
        return self.table[users[:, None], items]


class HistoryFirst(Table):
    """History items on top, then the target, then everything else."""

    def _scores(self, users, histories, items):
        out = super()._scores(users, histories, items)
        for r, (u, h) in enumerate(zip(users, histories, strict=True)):
            out[r, np.isin(items[r], h)] = 100.0
            out[r, items[r] == self.next_item(u, h)] = 50.0
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
        assert m[f"{split}/pointwise/auc"] == 1.0 and m[f"{split}/pointwise/gauc"] == 1.0
        assert m[f"{split}/pointwise/n_samples"] == data.n_users * (1 + N_PW)
        assert m[f"{split}/pointwise/positive_rate"] == pytest.approx(1 / (1 + N_PW))
        assert m[f"{split}/pointwise/logloss"] < 0.5  # probabilities: target 1, negatives <= 0.5
    ranking = res.per_user[res.per_user["protocol"] != "pointwise"]
    assert (ranking["rank"] == 1).all()
    assert (res.per_user.loc[res.per_user["protocol"] == "pointwise", "gauc"] == 1.0).all()


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
        assert res.metrics[f"{split}/pointwise/auc"] == 0.5 and res.metrics[f"{split}/pointwise/gauc"] == 0.5
        assert f"{split}/pointwise/logloss" not in res.metrics  # score_kind="score": no probabilities
    assert min(expected) > 10  # so full metrics at 10 are all 0
    assert res.metrics["test/full/hr_10"] == 0.0


def test_nan_scores_are_worst(data, plan):
    res = Evaluator(data, plan, eval_cfg()).evaluate(AllNaN(data))
    const = Evaluator(data, plan, eval_cfg()).evaluate(Constant(data))
    np.testing.assert_array_equal(res.per_user["rank"].dropna(), const.per_user["rank"].dropna())
    assert res.metrics["valid/pointwise/auc"] == 0.5
    assert math.isfinite(res.metrics["valid/pointwise/logloss"])  # NaN logits count as the lowest score


def test_ranks_match_independent_computation(data):
    plan = make_plan(data, max_users=23)
    method = Table(data, seed=4)
    res = Evaluator(data, plan, eval_cfg()).evaluate(method)
    pu = res.per_user[res.per_user["protocol"] != "pointwise"]
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
    res = Evaluator(data, plan, eval_cfg(protocols=["sampled", "full"])).evaluate(HistoryFirst(data))
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
        def _scores(self, users, histories, items):
            targets = np.array([self.next_item(u, h) for u, h in zip(users, histories, strict=True)])
            return np.where(items == targets[:, None], 9.0, 0.0)

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
                 "test/sampled/hr_5", "valid/pointwise/auc", "test/pointwise/gauc", "test/like/auc"):
        assert name in names
    assert not any(n.endswith("_20") for n in names)  # ks = [1, 5, 10]
    assert all(n.split("/")[0] in SPLITS and n.split("/")[1] in ("sampled", "full", "pointwise", "like")
               for n in names)

    class NoFull(Table):
        supports_full = False

        def score_full(self, users, histories):
            raise AssertionError("score_full must not be called")

    res = Evaluator(data, plan, eval_cfg()).evaluate(NoFull(data))
    assert not any("/full/" in n for n in res.metrics)
    assert set(res.per_user["protocol"]) == {"sampled", "pointwise"}
    assert any(note.startswith("full: skipped") for note in res.notes)
    only = Evaluator(data, plan, eval_cfg()).evaluate(Table(data), splits=["test"], protocols=["sampled"])
    assert {n.rsplit("/", 1)[0] for n in only.metrics} == {"test/sampled"}
    assert only.predictions is None


def test_wrong_shape_is_an_error(data, plan):
    for proto in ("sampled", "full", "pointwise", "like"):
        with pytest.raises(RuntimeError, match="shape"):
            Evaluator(data, plan, eval_cfg()).evaluate(WrongShape(data), protocols=[proto])


def test_batches(data, plan):
    method = Table(data)
    Evaluator(data, plan, eval_cfg(protocols=["sampled", "full", "pointwise"])).evaluate(method, splits=["valid"])
    # sampled, full, pointwise: ceil(n / 7) calls each, every user exactly once per protocol, in order
    n_batches = -(-data.n_users // 7)
    assert len(method.calls) == 3 * n_batches
    assert all(len(users) <= 7 for users, _, _ in method.calls)
    for k in range(3):
        calls = method.calls[k * n_batches:(k + 1) * n_batches]
        assert [u for users, _, _ in calls for u in users] == list(range(data.n_users))
    widths = {shape[1] for _, shape, _ in method.calls}
    assert widths == {1 + N_NEG, data.n_items + 1, 1 + N_PW}
    for users, _, histories in method.calls:  # the valid histories, nothing else
        for u, h in zip(users, histories, strict=True):
            np.testing.assert_array_equal(h, data.history(u, "valid"))


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


def test_pointwise_labels_the_target_1_whatever_its_rating(data):
    """pointwise asks "will the user interact with this item?": a held-out target rated below like_threshold
    is still the positive, never a 0 like a random unseen negative (the like protocol asks about ratings)."""
    plan = make_plan(data, like_threshold=5.0)
    p = plan["test"]
    assert (p.like_labels == 0).any() and (p.like_labels == 1).any()  # some targets disliked, some liked
    target_labels = p.pointwise_labels[p.pointwise_items == p.targets[:, None]]
    assert (target_labels == 1).all() and (p.pointwise_labels.sum(axis=1) == 1).all()
    res = Evaluator(data, plan, eval_cfg(protocols=["pointwise"])).evaluate(Oracle(data))
    assert res.metrics["test/pointwise/positive_rate"] == pytest.approx(1 / (1 + N_PW))
    assert res.metrics["test/pointwise/auc"] == 1.0  # the oracle finds every target, liked or not


def test_pointwise_gauc_and_auc_match_sklearn(data, plan):
    from sklearn.metrics import roc_auc_score

    method = Table(data, seed=7)
    res = Evaluator(data, plan, eval_cfg(protocols=["pointwise"])).evaluate(method, splits=["test"])
    p = plan["test"]
    scores = method.table[p.users[:, None], p.pointwise_items]
    per_user = [roc_auc_score(lab, sc) for lab, sc in zip(p.pointwise_labels, scores, strict=True)]
    assert res.metrics["test/pointwise/gauc"] == pytest.approx(np.mean(per_user))
    assert res.metrics["test/pointwise/auc"] == pytest.approx(roc_auc_score(p.pointwise_labels.ravel(), scores.ravel()))
    frame = res.per_user.set_index("user_id")["gauc"]
    np.testing.assert_allclose(frame.loc[data.user_ids[p.users].astype(str)].to_numpy(), per_user)


def test_like_auc_is_pooled_over_users_on_rated_targets_like_tallrec(data):
    from sklearn.metrics import roc_auc_score

    plan = make_plan(data, like_threshold=4.0)
    method = Table(data, seed=3)
    res = Evaluator(data, plan, eval_cfg(protocols=["like"])).evaluate(method, splits=["test"])
    p = plan["test"]
    rated = p.like_labels >= 0
    assert rated.all()  # synthetic data: every target is rated
    scores = method.table[p.users, p.targets]
    assert res.metrics["test/like/auc"] == pytest.approx(roc_auc_score(p.like_labels[rated], scores[rated]))
    assert res.metrics["test/like/positive_rate"] == pytest.approx(p.like_labels.mean())
    assert res.metrics["test/like/n_samples"] == len(p.users)
    assert (np.array([shape for _, shape, _ in method.calls])[:, 1] == 1).all()  # the target alone


def test_like_is_skipped_with_a_note_without_ratings_or_for_listwise_scorers(data):
    unrated = dataclasses.replace(data, seq_ratings=np.full(len(data.seq_ratings), np.nan))
    plan = make_plan(unrated, like_threshold=4.0)
    assert (plan["test"].like_labels == -1).all()
    res = Evaluator(unrated, plan, eval_cfg()).evaluate(Table(unrated))
    assert not any("/like/" in n for n in res.metrics)
    assert any("like: skipped" in n and "no ratings" in n for n in res.notes)

    class Listwise(Table):
        order_sensitive = True

    res = Evaluator(data, make_plan(data, like_threshold=4.0), eval_cfg()).evaluate(Listwise(data))
    assert not any("/like/" in n for n in res.metrics) and any("like: skipped" in n for n in res.notes)


def test_crm_dot_products_log_no_logloss():
    """CRM scores are dot products, not probabilities: no log-loss (only Yes/No heads get one)."""
    from llmrec_cli.methods.baseline import CRMMethod

    assert CRMMethod.score_kind == "score"
    assert "logloss" not in Evaluator._logloss(CRMMethod, np.array([[1, 0]]), np.array([[3.0, -2.0]]))


def test_score_gets_the_split_histories_and_never_a_target(data, plan):
    """Every history handed to `score` is exactly what precedes that split's target: for valid the training
    items, for test the training items and the valid target, never the test target itself."""
    method = Table(data)
    Evaluator(data, plan, eval_cfg()).evaluate(method)
    assert method.calls
    seen = set()
    for users, _, histories in method.calls:
        for u, h in zip(users, histories, strict=True):
            split = next(s for s in SPLITS if np.array_equal(h, data.history(u, s)))
            seen.add(split)
            assert len(h) == data.positions(split)[u]  # nothing from the target on
    assert seen == set(SPLITS)


class PositionBiased(Fake):
    """The worst position bias: the first candidate shown scores highest, whatever it is."""

    order_sensitive = True

    def _scores(self, users, histories, items):
        return np.broadcast_to(-np.arange(items.shape[1], dtype=float), items.shape).copy()


def test_order_sensitive_scorers_see_seeded_orders_independent_of_the_plan_order(data, plan):
    from llmrec_cli.eval.orders import presentation_orders

    method = PositionBiased(data)
    res = Evaluator(data, plan, eval_cfg(protocols=["sampled"])).evaluate(method, splits=["test"])
    p = plan["test"]
    # a scorer that always picks the first shown item: its hit rate is chance, not the plan's target column
    assert method.calls
    orders = presentation_orders(0, p.users, p.sampled, 1)[0]
    # the same candidate SET in another order is shown in the same order: nothing of the input order leaks
    reversed_rows = p.sampled[:, ::-1]
    np.testing.assert_array_equal(np.take_along_axis(p.sampled, orders, 1),
                                  np.take_along_axis(reversed_rows, presentation_orders(0, p.users, reversed_rows, 1)[0], 1))
    assert res.metrics["test/sampled/hr_1"] == pytest.approx(
        np.mean(np.take_along_axis(p.sampled, orders, 1)[:, 0] == p.targets))


def test_permutations_average_k_orders_and_log_the_spread(data, plan):
    method = PositionBiased(data)
    res = Evaluator(data, plan, eval_cfg(protocols=["sampled"], permutations=4)).evaluate(method, splits=["test"])
    n_batches = -(-data.n_users // 7)
    assert len(method.calls) == 4 * n_batches
    m = res.metrics
    assert m["test/sampled/permutations"] == 4 and m["test/sampled/permutation_rank_std"] > 0
    assert "test/sampled/permutation_ndcg_10_std" in m
    # averaging 4 orders of a pure position scorer: the mean score still ranks every user
    assert 0 < m["test/sampled/hr_10"] <= 1
    plain = Evaluator(data, plan, eval_cfg(protocols=["sampled"], permutations=4)).evaluate(Table(data),
                                                                                            splits=["test"])
    assert "test/sampled/permutations" not in plain.metrics  # order-insensitive scorers are scored once


# ---- frames ------------------------------------------------------------------------------------------------

def test_prediction_and_per_user_frames(data, plan):
    method = Table(data, seed=2)
    res = Evaluator(data, plan, eval_cfg(save_full_topk=5)).evaluate(method, keep_predictions=True)
    pred, pu = res.predictions, res.per_user
    assert list(pred.columns) == ["user_id", "split", "protocol", "item_id", "score", "is_target"]
    assert pred["is_target"].dtype == bool and pred["score"].dtype == np.float64
    assert set(pred["protocol"]) == {"sampled", "full", "pointwise", "like"}

    ranking = pred[pred["protocol"].isin(["sampled", "full"])]
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

    # per_user: one row per user, split and per-user protocol, ranks consistent with the predictions
    assert len(pu) == data.n_users * 2 * 3
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
