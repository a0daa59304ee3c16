"""The shared evaluation plan: sampled candidates, pointwise and like labels, per-user seeding, user subsets
(a subset's plan is the full plan's rows) and the plan cache."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from llmrec_cli.config.schema import EvalConfig
from llmrec_cli.data import candidates as C
from llmrec_cli.data.candidates import build_plan, get_plan
from llmrec_cli.data.prepare import SPLITS, prepare
from llmrec_cli.data.raw import RawData
from llmrec_cli.data.sources.synthetic import SyntheticConfig, load_synthetic
from llmrec_cli.errors import DataError

PREP = {"name": "synthetic", "loader": "synthetic", "kcore": 0, "min_rating": None, "min_user_interactions": 3}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMREC_DATA_DIR", raising=False)
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def data():
    raw = load_synthetic(SyntheticConfig(name="synthetic", loader="synthetic", num_users=120, num_items=80,
                                         min_len=5, max_len=20, data_seed=3))
    return prepare(raw, PREP)


def settings(**kw) -> dict:
    out = {"seed": 0, "num_negatives": 19, "negative_sampling": "uniform", "pointwise_negatives": 2,
           "like_threshold": 4.0, "max_users": None}
    out.update(kw)
    return out


def arrays(plan):
    return {(s, f.name): getattr(plan[s], f.name) for s in SPLITS for f in dataclasses.fields(C.SplitPlan)}


def assert_same_plan(a, b):
    assert a.hash == b.hash
    for key, arr in arrays(a).items():
        np.testing.assert_array_equal(arrays(b)[key], arr, err_msg=str(key))


def target_labels(p):
    """Pointwise label of each user's target (the pointwise items are shuffled per user)."""
    is_target = p.pointwise_items == p.targets[:, None]
    assert (is_target.sum(axis=1) == 1).all()
    return p.pointwise_labels[is_target]


def negative_labels(p):
    return p.pointwise_labels[p.pointwise_items != p.targets[:, None]]


def check_candidates(data, plan, n_neg, n_pw):
    for split in SPLITS:
        p = plan[split]
        n = len(p.users)
        assert p.sampled.shape == (n, 1 + n_neg) and p.pointwise_items.shape == (n, 1 + n_pw)
        np.testing.assert_array_equal(p.targets, data.targets(split)[p.users])
        np.testing.assert_array_equal(p.sampled[np.arange(n), p.sampled_target_pos], p.targets)
        assert ((p.pointwise_items == p.targets[:, None]).sum(axis=1) == 1).all()
        for row, u in enumerate(p.users):
            seq = set(data.sequence(int(u)).tolist())
            cands = p.sampled[row]
            assert (cands == p.targets[row]).sum() == 1
            negs = np.delete(cands, p.sampled_target_pos[row])
            assert len(set(negs.tolist())) == n_neg  # distinct
            assert not seq & set(negs.tolist())  # never in the user's whole sequence (any split)
            assert negs.min() >= 1 and negs.max() <= data.n_items  # never padding
            pw_negs = p.pointwise_items[row][p.pointwise_items[row] != p.targets[row]]
            assert len(set(pw_negs.tolist())) == n_pw and not seq & set(pw_negs.tolist())
            assert n_pw == 0 or (pw_negs.min() >= 1 and pw_negs.max() <= data.n_items)


@pytest.mark.parametrize("how", ["uniform", "popularity"])
def test_sampled_rows_are_valid(data, how):
    plan = build_plan(data, settings(negative_sampling=how))
    check_candidates(data, plan, 19, 2)
    for split in SPLITS:
        assert plan[split].users.tolist() == list(range(data.n_users))
        assert plan[split].sampled.dtype.kind == "i"


def test_target_position_is_shuffled(data):
    plan = build_plan(data, settings())
    pos = np.concatenate([plan[s].sampled_target_pos for s in SPLITS])  # 240 rows over 20 columns
    counts = np.bincount(pos, minlength=20)
    assert counts.max() <= 30 and (counts > 0).sum() >= 16  # ~12 per column expected
    assert 6.0 < pos.mean() < 13.0  # uniform mean is 9.5
    # the rows are shuffled independently: the negatives are not in sorted/sampled order either
    t = plan["test"]
    negs = [np.delete(r, p) for r, p in zip(t.sampled, t.sampled_target_pos, strict=True)]
    assert not all((np.diff(n) > 0).all() for n in negs)


def test_same_seed_same_plan_other_seed_other_plan(data):
    a, b = build_plan(data, settings(seed=7)), build_plan(data, settings(seed=7))
    assert_same_plan(a, b)
    c = build_plan(data, settings(seed=8))
    assert c.hash != a.hash
    assert not np.array_equal(c["test"].sampled, a["test"].sampled)
    np.testing.assert_array_equal(c["test"].targets, a["test"].targets)  # targets do not depend on the seed
    # every plan setting enters the hash
    for change in ({"num_negatives": 18}, {"pointwise_negatives": 1}, {"negative_sampling": "popularity"},
                   {"like_threshold": 5.0}, {"max_users": 50}):
        assert build_plan(data, settings(seed=7, **change)).hash != a.hash, change
    assert len(a.hash) == 16 and int(a.hash, 16) >= 0


def test_plan_hash_stable_across_processes(data):
    plan = build_plan(data, settings(seed=11, negative_sampling="popularity", max_users=40))
    code = textwrap.dedent("""
        from llmrec_cli.data.candidates import build_plan
        from llmrec_cli.data.prepare import prepare
        from llmrec_cli.data.sources.synthetic import SyntheticConfig, load_synthetic
        raw = load_synthetic(SyntheticConfig(name="synthetic", loader="synthetic", num_users=120, num_items=80,
                                             min_len=5, max_len=20, data_seed=3))
        data = prepare(raw, {"name": "synthetic", "loader": "synthetic", "kcore": 0, "min_rating": None,
                             "min_user_interactions": 3})
        print(data.data_hash, build_plan(data, dict(seed=11, num_negatives=19, negative_sampling="popularity",
                                                    pointwise_negatives=2, like_threshold=4.0, max_users=40)).hash)
    """)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [data.data_hash, plan.hash]


def test_max_users_subset(data):
    plan = build_plan(data, settings(max_users=30))
    users = plan["valid"].users
    assert len(users) == 30 and len(np.unique(users)) == 30
    assert (np.diff(users) > 0).all()  # sorted
    np.testing.assert_array_equal(plan["test"].users, users)  # shared by valid and test
    assert users.min() >= 0 and users.max() < data.n_users
    check_candidates(data, plan, 19, 2)
    assert not np.array_equal(build_plan(data, settings(max_users=30, seed=1))["valid"].users, users)
    assert users.tolist() != list(range(30))  # a random subset, not the first users
    np.testing.assert_array_equal(build_plan(data, settings(max_users=30))["test"].users, users)
    for m in (data.n_users, data.n_users + 5):
        assert build_plan(data, settings(max_users=m))["test"].users.tolist() == list(range(data.n_users))


def zipf_data(seed=0, n_users=150, n_items=120):
    """Strongly skewed item popularity."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_items + 1) ** 1.2
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=int(rng.integers(4, 12)), replace=False, p=w / w.sum())
        rows += [(str(u), str(i + 1), t, 4.0) for t, i in enumerate(items)]
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"]).astype(
        {"user": str, "item": str, "timestamp": "int64", "rating": "float64"})
    return prepare(RawData(inter, pd.DataFrame({"item": [], "title": []}, dtype=str)), PREP)


def test_popularity_sampling_prefers_popular_items():
    data = zipf_data()
    pop = data.train_counts().astype(float)
    s = settings(num_negatives=10, pointwise_negatives=0)
    uni = build_plan(data, s)
    popular = build_plan(data, dict(s, negative_sampling="popularity"))
    check_candidates(data, popular, 10, 0)

    def neg_pop(plan):
        p = plan["test"]
        mask = np.ones_like(p.sampled, dtype=bool)
        mask[np.arange(len(p.users)), p.sampled_target_pos] = False
        return pop[p.sampled[mask]]

    assert neg_pop(popular).mean() > 2.0 * neg_pop(uni).mean()
    # the most popular quarter of the catalogue dominates popularity negatives, not uniform ones
    top = np.argsort(-pop)[: data.n_items // 4]
    share = lambda plan: np.isin(neg_pop(plan), pop[top]).mean()  # noqa: E731
    assert share(popular) > 0.5 > share(uni)


def test_popularity_falls_back_to_uniform_over_unseen():
    # ask for more negatives than there are unseen items with training interactions
    data = zipf_data(seed=1, n_users=40, n_items=60)
    pop = data.train_counts()
    max_seen = max(len(np.unique(data.sequence(u))) for u in range(data.n_users))
    n = data.n_items - max_seen
    popular_unseen = [((pop > 0) & ~np.isin(np.arange(len(pop)), data.sequence(u))).sum()
                      for u in range(data.n_users)]
    assert min(popular_unseen) < n  # some users must get negatives without training interactions
    plan = build_plan(data, settings(num_negatives=n, pointwise_negatives=0, negative_sampling="popularity"))
    check_candidates(data, plan, n, 0)


def test_uniform_can_exhaust_the_catalogue(data):
    max_seen = max(len(np.unique(data.sequence(u))) for u in range(data.n_users))
    n = data.n_items - max_seen
    plan = build_plan(data, settings(num_negatives=n, pointwise_negatives=n))
    check_candidates(data, plan, n, n)
    u = int(np.argmax([len(np.unique(data.sequence(u))) for u in range(data.n_users)]))
    for items in (plan["test"].sampled[u], plan["test"].pointwise_items[u]):  # each protocol on its own
        assert set(items.tolist()) | set(data.sequence(u).tolist()) == set(range(1, data.n_items + 1))
    with pytest.raises(DataError, match="unseen items"):
        build_plan(data, settings(num_negatives=n + 1, pointwise_negatives=1))
    with pytest.raises(DataError, match="unseen items"):
        build_plan(data, settings(num_negatives=1, pointwise_negatives=n + 1))
    with pytest.raises(DataError, match="unseen items"):
        build_plan(data, settings(num_negatives=n + 1, pointwise_negatives=0, negative_sampling="popularity"))


def with_target_ratings(data, ratings_by_split):
    r = data.seq_ratings.copy()
    for split, values in ratings_by_split.items():
        r[data.offsets[:-1] + data.positions(split)] = values
    return dataclasses.replace(data, seq_ratings=r)


def test_pointwise_labels_the_target_1_and_like_labels_follow_the_threshold(data):
    """Two protocols, two questions: pointwise (will the user interact?) labels every held-out target 1,
    whatever its rating; like (will the user like what they consumed?) labels it by rating >= threshold and
    leaves unrated targets out (-1)."""
    n = data.n_users
    test_r = np.tile([1.0, 3.0, 3.99, 4.0, 5.0, np.nan], n // 6 + 1)[:n]
    valid_r = np.tile([np.nan, 4.5, 2.0], n // 3 + 1)[:n]
    d = with_target_ratings(data, {"test": test_r, "valid": valid_r})
    plan = build_plan(d, settings(pointwise_negatives=3))
    for split, r in (("test", test_r), ("valid", valid_r)):
        labels = plan[split].pointwise_labels
        assert labels.shape == (n, 4)
        assert set(np.unique(labels).tolist()) <= {0, 1}
        assert (target_labels(plan[split]) == 1).all()
        assert (negative_labels(plan[split]) == 0).all()
        np.testing.assert_array_equal(plan[split].like_labels, np.where(np.isnan(r), -1, r >= 4.0).astype(int))
    assert plan["test"].like_labels[:6].tolist() == [0, 0, 0, 1, 1, -1]
    high = build_plan(d, settings(pointwise_negatives=3, like_threshold=5.0))
    assert high["test"].like_labels[:6].tolist() == [0, 0, 0, 0, 1, -1]
    assert_same_plan_rows = np.testing.assert_array_equal
    assert_same_plan_rows(high["test"].pointwise_items, plan["test"].pointwise_items)  # labels change, not items
    nobody = build_plan(d, settings(pointwise_negatives=3, like_threshold=None))
    assert (nobody["test"].like_labels == -1).all() and (target_labels(nobody["test"]) == 1).all()


def test_a_subset_plan_is_the_full_plans_rows(data):
    """Candidates are a function of (seed, dataset, user, split): a max_users subset scores each user on exactly
    the candidates (and order) of the all-user plan, so subset numbers are a subset of the full run's."""
    full = build_plan(data, settings())
    for m in (7, 30):
        sub = build_plan(data, settings(max_users=m))
        for split in SPLITS:
            rows = np.searchsorted(full[split].users, sub[split].users)
            np.testing.assert_array_equal(full[split].users[rows], sub[split].users)
            for f in ("targets", "sampled", "sampled_target_pos", "pointwise_items", "pointwise_labels",
                      "like_labels"):
                np.testing.assert_array_equal(getattr(full[split], f)[rows], getattr(sub[split], f), err_msg=f)


def test_each_protocol_has_its_own_stream(data):
    """Changing the sampled negatives leaves the pointwise candidates alone, and vice versa."""
    a = build_plan(data, settings(num_negatives=19, pointwise_negatives=2))
    b = build_plan(data, settings(num_negatives=9, pointwise_negatives=2))
    c = build_plan(data, settings(num_negatives=19, pointwise_negatives=5))
    np.testing.assert_array_equal(a["test"].pointwise_items, b["test"].pointwise_items)
    np.testing.assert_array_equal(a["test"].sampled, c["test"].sampled)
    assert C.PLAN_VERSION == "3"  # plans of the shared-stream era (version 2) are never reused


def eval_cfg(**kw):
    cfg = OmegaConf.structured(EvalConfig)
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_get_plan_caches_and_reloads(data, tmp_path, monkeypatch):
    cfg = eval_cfg(num_negatives=9, pointwise_negatives=2, max_users=50, negative_sampling="popularity")
    first = get_plan(data, cfg, 3)
    assert_same_plan(first, build_plan(data, C.plan_settings(cfg, 3)))
    files = list((tmp_path / "cache" / "plans").glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith(data.data_hash)

    def boom(*a, **k):
        raise AssertionError("the cached plan should have been loaded")

    monkeypatch.setattr(C, "build_plan", boom)
    again = get_plan(data, cfg, 3)
    assert_same_plan(first, again)
    assert isinstance(again.hash, str)
    for key, arr in arrays(again).items():
        assert arr.dtype == arrays(first)[key].dtype, key
    monkeypatch.undo()
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    other = get_plan(data, cfg, 4)  # another seed: another file
    assert other.hash != first.hash
    assert len(list((tmp_path / "cache" / "plans").glob("*.npz"))) == 2
    assert not list((tmp_path / "cache" / "plans").glob(".*"))  # no temp files left


def test_get_plan_cache_distinguishes_ratings(data):
    """Same sequences (same data_hash), different ratings: the pointwise labels must not come from the cache."""
    cfg = eval_cfg(num_negatives=5, pointwise_negatives=1)
    lo = with_target_ratings(data, {"test": 1.0, "valid": 1.0})
    hi = with_target_ratings(data, {"test": 5.0, "valid": 5.0})
    assert lo.data_hash == hi.data_hash
    a, b = get_plan(lo, cfg, 0), get_plan(hi, cfg, 0)
    assert (a["test"].like_labels == 0).all()
    assert (b["test"].like_labels == 1).all()
    assert a.hash != b.hash
