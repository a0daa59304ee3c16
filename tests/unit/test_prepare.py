"""Shared preparation on hand-made RawData: filters, iterative k-core, chronological leave-one-out with file-order
tie-breaks, the train/valid/test views, id ordering, item text and the parquet cache round trip."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmrec_cli.data import prepare as prep
from llmrec_cli.data.prepare import PreparedData, prepare
from llmrec_cli.data.raw import RawData
from llmrec_cli.errors import DataError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMREC_DATA_DIR", raising=False)
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))


def make_raw(rows, items=None) -> RawData:
    """rows: (user, item, timestamp[, rating]) in file order."""
    rows = [tuple(r) + (np.nan,) * (4 - len(r)) for r in rows]
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"]).astype(
        {"user": str, "item": str, "timestamp": "int64", "rating": "float64"})
    if items is None:
        items = pd.DataFrame({"item": pd.Series([], dtype=str), "title": pd.Series([], dtype=str)})
    return RawData(inter, items)


def cfg(**kw) -> dict:
    out = {"name": "hand", "loader": "test", "kcore": 0, "min_rating": None, "min_user_interactions": 3}
    out.update(kw)
    return out


def raw_seqs(data: PreparedData) -> dict[str, list[str]]:
    """{raw user id: [raw item ids in prepared order]}."""
    return {str(data.user_ids[u]): [str(data.item_ids[i]) for i in data.sequence(u)] for u in range(data.n_users)}


def random_raw(seed: int, n_users=25, n_items=30, repeats=True) -> RawData:
    """Random interactions with coarse timestamps (many ties) and, optionally, repeated items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(2, 12))
        items = rng.integers(1, n_items + 1, n) if repeats else rng.choice(np.arange(1, n_items + 1), n, False)
        for i, t in zip(items, rng.integers(0, 4, n), strict=True):
            rows.append((f"u{u}", f"i{i}", int(t), float(rng.integers(1, 6))))
    order = rng.permutation(len(rows))  # interleave users in the file
    return make_raw([rows[k] for k in order])


def expected_seqs(raw: RawData, min_len=3) -> dict[str, list[str]]:
    """Independent reference: per user, sort by (timestamp, file position) with Python's sort."""
    per_user: dict[str, list] = {}
    for pos, r in enumerate(raw.interactions.itertuples(index=False)):
        per_user.setdefault(r.user, []).append((r.timestamp, pos, r.item))
    return {u: [it for _, _, it in sorted(v)] for u, v in per_user.items() if len(v) >= min_len}


# ---- filters ----------------------------------------------------------------------------------------------

def test_kcore_iterates_until_stable():
    rows, t = [], 0
    for u in ("U1", "U2", "U3", "U4"):
        for i in ("a", "b", "c"):
            rows.append((u, i, t := t + 1))
    # X: z is X's alone -> z goes in round 1, leaving X with a and w -> X goes in round 2;
    # w (X, U1, U2) survives rounds 1 and 2, but without X it has 2 users -> w goes in round 3
    rows += [("X", "a", 100), ("X", "z", 102), ("X", "w", 103)]
    rows += [("U1", "w", 104), ("U2", "w", 105)]
    # Y repeats one item: 4 interactions but only 2 distinct items -> not in the 3-core
    rows += [("Y", "a", 200), ("Y", "a", 201), ("Y", "a", 202), ("Y", "b", 203)]
    data = prepare(make_raw(rows), cfg(kcore=3))
    # one or two passes would keep w (and a single pass X too, until min_user_interactions)
    assert list(data.user_ids) == ["U1", "U2", "U3", "U4"]
    assert list(data.item_ids) == ["<pad>", "a", "b", "c"]
    assert all(s == ["a", "b", "c"] for s in raw_seqs(data).values())
    assert data.stats["raw"]["users"] == 6 and data.stats["prepared"]["users"] == 4
    assert data.stats["prepared"]["interactions"] == 12
    # without k-core every user with >= 3 interactions stays
    loose = prepare(make_raw(rows), cfg(kcore=0))
    assert set(loose.user_ids) == {"U1", "U2", "U3", "U4", "X", "Y"}


def test_kcore_result_is_a_core():
    raw = random_raw(3, n_users=60, n_items=15)
    data = prepare(raw, cfg(kcore=4))
    users, items = np.repeat(np.arange(data.n_users), np.diff(data.offsets)), data.seq_items
    pairs = pd.DataFrame({"u": users, "i": items}).drop_duplicates()
    assert pairs.groupby("u").size().min() >= 4 and pairs.groupby("i").size().min() >= 4
    assert set(np.unique(items)) == set(range(1, data.n_items + 1))  # no index without interactions


def test_min_rating_filter():
    rows = [("u1", "a", 1, 5), ("u1", "b", 2, 2), ("u1", "c", 3, 4), ("u1", "d", 4, 4),
            ("u2", "a", 1, 3.9), ("u2", "c", 2, 4), ("u2", "d", 3, 5), ("u2", "e", 4, 1)]
    data = prepare(make_raw(rows), cfg(min_rating=4))
    assert raw_seqs(data) == {"u1": ["a", "c", "d"]}  # u2 keeps only 2 -> dropped; b, e never pass
    assert list(data.item_ids) == ["<pad>", "a", "c", "d"]
    assert data.seq_ratings.tolist() == [5, 4, 4]
    kept_all = prepare(make_raw(rows), cfg())
    assert len(kept_all.seq_items) == 8
    no_ratings = make_raw([(r[0], r[1], r[2]) for r in rows])
    with pytest.raises(DataError, match="min_rating"):
        prepare(no_ratings, cfg(min_rating=4))


def test_short_users_dropped():
    rows = [("a", "1", 1), ("a", "2", 2),  # 2 interactions: dropped
            ("b", "1", 1), ("b", "2", 2), ("b", "3", 3),
            ("c", "9", 1), ("c", "1", 2)]  # dropped too; item 9 was only seen by c
    data = prepare(make_raw(rows), cfg())
    assert list(data.user_ids) == ["b"]
    assert list(data.item_ids) == ["<pad>", "1", "2", "3"]
    with pytest.raises(DataError, match="no users left"):
        prepare(make_raw(rows[:2]), cfg())
    more = prepare(make_raw(rows), cfg(min_user_interactions=2))
    assert list(more.user_ids) == ["a", "b", "c"]


# ---- order and split ----------------------------------------------------------------------------------------

def test_timestamp_ties_keep_file_order():
    rows = [
        ("u", "i1", 1), ("u", "i2", 5), ("v", "x3", 9), ("v", "x1", 1),
        ("u", "i3", 5),  # same time as i2 but later in the file: u's test target
        ("v", "x2", 9),  # same time as x3, later in the file: v's test target (x3 the valid one)
        ("w", "i1", 3), ("w", "i2", 3), ("w", "i3", 3), ("w", "x1", 3),  # all tied: file order
    ]
    data = prepare(make_raw(rows), cfg())
    assert raw_seqs(data) == {"u": ["i1", "i2", "i3"], "v": ["x1", "x3", "x2"], "w": ["i1", "i2", "i3", "x1"]}
    u = list(data.user_ids).index("u")
    v = list(data.user_ids).index("v")
    assert data.item_ids[data.target(u, "test")] == "i3" and data.item_ids[data.target(u, "valid")] == "i2"
    assert data.item_ids[data.target(v, "test")] == "x2" and data.item_ids[data.target(v, "valid")] == "x3"
    # swapping the tied rows in the file swaps the targets
    swapped = [rows[4] if k == 1 else rows[1] if k == 4 else r for k, r in enumerate(rows)]
    data2 = prepare(make_raw(swapped), cfg())
    assert raw_seqs(data2)["u"] == ["i1", "i3", "i2"]
    assert data2.data_hash != data.data_hash


def test_sequences_match_reference_on_random_data():
    raw = random_raw(0)
    data = prepare(raw, cfg())
    assert raw_seqs(data) == expected_seqs(raw)
    # ratings travel with their interactions
    for u in range(data.n_users):
        uid = data.user_ids[u]
        sub = raw.interactions[raw.interactions["user"] == uid].reset_index()
        sub = sub.sort_values(["timestamp", "index"], kind="stable")
        np.testing.assert_array_equal(data.seq_ratings[data.offsets[u]:data.offsets[u + 1]], sub["rating"])


def test_interleaving_other_users_changes_nothing():
    raw = random_raw(1)
    inter = raw.interactions
    # re-order the file by user only (stable): each user's own order is kept
    by_user = inter.sort_values("user", kind="stable").reset_index(drop=True)
    a, b = prepare(raw, cfg()), prepare(RawData(by_user, raw.items), cfg())
    assert a.data_hash == b.data_hash
    np.testing.assert_array_equal(a.seq_items, b.seq_items)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    again = prepare(raw, cfg())
    assert again.data_hash == a.data_hash and again.key == a.key


def test_views_and_leakage_guard():
    data = prepare(random_raw(2, repeats=True), cfg())
    n = data.n_users
    lengths = np.diff(data.offsets)
    assert lengths.min() >= 3 and data.offsets[0] == 0 and data.offsets[-1] == len(data.seq_items)
    for u in range(n):
        seq = data.sequence(u)
        train = data.train_sequence(u)
        np.testing.assert_array_equal(train, seq[:-2])
        np.testing.assert_array_equal(data.history(u, "valid"), seq[:-2])
        np.testing.assert_array_equal(data.history(u, "test"), seq[:-1])
        assert data.target(u, "test") == seq[-1] and data.target(u, "valid") == seq[-2]
        # the target occurrences themselves are never part of what the method trains on
        assert len(train) == len(seq) - 2
    np.testing.assert_array_equal(data.targets("test"), [data.sequence(u)[-1] for u in range(n)])
    np.testing.assert_array_equal(data.targets("valid"), [data.sequence(u)[-2] for u in range(n)])
    np.testing.assert_array_equal(data.target_ratings("test"),
                                  [data.seq_ratings[data.offsets[u + 1] - 1] for u in range(n)])

    pu, pi = data.train_pairs()
    assert len(pu) == len(data.seq_items) - 2 * n
    for u in range(n):
        np.testing.assert_array_equal(pi[pu == u], data.train_sequence(u))
    counts = data.train_counts()
    assert counts.shape == (data.n_items + 1,) and counts[0] == 0
    expected = np.bincount(np.concatenate([data.train_sequence(u) for u in range(n)]), minlength=data.n_items + 1)
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(counts, np.bincount(pi, minlength=data.n_items + 1))
    # a target item counts only through training occurrences (its own or other users')
    trains = [list(data.train_sequence(u)) for u in range(n)]
    for u in range(n):
        for split in ("valid", "test"):
            t = data.target(u, split)
            assert counts[t] == sum(s.count(t) for s in trains)


def test_leakage_guard_with_repeated_target():
    # u consumes x, then y, then x again as its test target: only the final occurrence is held out
    rows = [("u", "x", 1), ("u", "y", 2), ("u", "z", 3), ("u", "x", 4),
            ("v", "y", 1), ("v", "z", 2), ("v", "y", 3)]
    data = prepare(make_raw(rows), cfg())
    u = list(data.user_ids).index("u")
    assert [data.item_ids[i] for i in data.train_sequence(u)] == ["x", "y"]
    assert data.item_ids[data.target(u, "valid")] == "z" and data.item_ids[data.target(u, "test")] == "x"
    counts = dict(zip(data.item_ids, data.train_counts(), strict=True))
    assert counts == {"<pad>": 0, "x": 1, "y": 2, "z": 0}  # z is only ever a valid target


# ---- ids and item text ---------------------------------------------------------------------------------

def test_numeric_ids_sort_numerically():
    rows = [(u, i, t) for t, (u, i) in enumerate(
        [("10", "100"), ("10", "9"), ("10", "20"), ("9", "100"), ("9", "9"), ("9", "1"), ("100", "2"),
         ("100", "9"), ("100", "20"), ("2", "1"), ("2", "2"), ("2", "100")])]
    data = prepare(make_raw(rows), cfg())
    assert list(data.user_ids) == ["2", "9", "10", "100"]
    assert list(data.item_ids) == ["<pad>", "1", "2", "9", "20", "100"]
    assert data.items["item"].tolist() == ["1", "2", "9", "20", "100"]
    assert data.items["item_idx"].tolist() == [1, 2, 3, 4, 5]
    # a non-numeric id switches to string order
    mixed = prepare(make_raw(rows + [("a", "9", 50), ("a", "1", 51), ("a", "2", 52)]), cfg())
    assert list(mixed.user_ids) == ["10", "100", "2", "9", "a"]


def test_item_text_built_from_metadata():
    rows = [("u", i, t) for t, i in enumerate(["1", "2", "3", "4", "5"])]
    items = pd.DataFrame({
        "item": ["1", "2", "3", "5", "99"],
        "title": ["Toy Story", "Heat", "", "Known", "Unused"],
        "year": pd.array([1995, pd.NA, 2001, 2003, 1990], dtype="Int64"),
        "genres": ["Animation|Comedy", "Crime", None, "Drama", "X"],
        "text": [None, None, None, "Given text.", "unused"],
    })
    data = prepare(make_raw(rows, items), cfg())
    t = data.items.set_index("item")
    assert t.loc["1", "text"] == "Toy Story (1995); Animation, Comedy"
    assert t.loc["2", "text"] == "Heat; Crime"
    assert t.loc["3", "title"] == "3" and t.loc["3", "text"] == "3 (2001)"  # empty title -> the id
    assert t.loc["4", "title"] == "4" and t.loc["4", "text"] == "4"  # no metadata at all
    assert t.loc["5", "text"] == "Given text."  # existing text is kept
    assert "99" not in t.index  # items without interactions are not indexed
    # no text column at all, with categories and brand
    items2 = pd.DataFrame({"item": ["1", "2"], "title": ["Kettle", "Chair"],
                           "categories": ["Kitchen|Kettles", None], "brand": ["Acme", "Seatco"]})
    t2 = prepare(make_raw(rows, items2), cfg()).items.set_index("item")
    assert t2.loc["1", "text"] == "Kettle; Kitchen, Kettles; Acme"
    assert t2.loc["2", "text"] == "Chair; Seatco"
    assert t2.loc["5", "text"] == "5"


# ---- cache -------------------------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    raw = random_raw(4)
    items = pd.DataFrame({"item": [f"i{k}" for k in range(1, 31)], "title": [f"T{k}" for k in range(1, 31)],
                          "year": pd.array(rng.integers(1990, 2020, 30), dtype="Int64"),
                          "genres": ["A|B"] * 30})
    raw = RawData(raw.interactions.assign(rating=lambda f: f["rating"].where(f.index % 5 != 0)), items,
                  {"/x/file": "abc"})
    data = prepare(raw, cfg(name="rt"))
    assert prep.load(data.key) is None
    path = prep.save(data)
    assert path == tmp_path / "cache" / "prepared" / data.key and (path / "meta.json").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    got = prep.load(data.key)
    assert got is not None
    assert (got.name, got.key, got.data_hash) == (data.name, data.key, data.data_hash)
    np.testing.assert_array_equal(got.seq_items, data.seq_items)
    np.testing.assert_array_equal(got.seq_ratings, data.seq_ratings)  # NaN positions included
    assert np.isnan(got.seq_ratings).any()
    np.testing.assert_array_equal(got.offsets, data.offsets)
    assert list(got.user_ids) == list(data.user_ids) and list(got.item_ids) == list(data.item_ids)
    pd.testing.assert_frame_equal(got.items, data.items)
    assert got.stats["prepared"] == data.stats["prepared"] and got.stats["files"] == {"/x/file": "abc"}
    for u in range(data.n_users):
        np.testing.assert_array_equal(got.history(u, "test"), data.history(u, "test"))
    # saving again replaces the folder
    prep.save(data)
    assert prep.load(data.key).data_hash == data.data_hash


def test_dataset_key():
    base = cfg(name="k", kcore=5)
    assert prep.dataset_key(base) == prep.dataset_key(dict(base, url="http://x", sha256="y"))
    assert prep.dataset_key(base) != prep.dataset_key(dict(base, kcore=4))
    assert prep.dataset_key(base) != prep.dataset_key(dict(base, min_rating=4.0))


# ---- global temporal split ---------------------------------------------------------------------------------

def timed_raw(seed: int = 0, n_users: int = 60, n_items: int = 40) -> RawData:
    """Users active over different, overlapping periods (distinct timestamps, so the cuts are unambiguous)."""
    rng = np.random.default_rng(seed)
    rows, t = [], 0
    for u in range(n_users):
        start = int(rng.integers(0, 10_000))
        n = int(rng.integers(3, 15))
        for k, i in enumerate(rng.choice(np.arange(1, n_items + 1), n, replace=False)):
            rows.append((f"u{u}", f"i{i}", start + 100 * k + u, 4.0))
        t += n
    return make_raw(rows)


def test_temporal_split_no_training_interaction_after_a_test_interaction():
    d = prepare(timed_raw(), cfg(split="temporal", split_time=[0.7, 0.85]))
    assert d.split == "temporal"
    info = d.stats["split"]
    t_valid, t_test = info["t_valid"], info["t_test"]
    train_times, test_times, valid_times = [], [], []
    for u in range(d.n_users):
        t = d.seq_times[d.offsets[u] : d.offsets[u + 1]]
        train = t[: d.train_end[u]]
        assert (train < t_valid).all() and (t[d.train_end[u]:] >= t_valid).all()  # a time prefix
        train_times += train.tolist()
        if d.valid_pos[u] >= 0:
            tv = t[d.valid_pos[u]]
            assert t_valid <= tv < t_test and d.valid_pos[u] == d.train_end[u]  # the first item after the cut
            valid_times.append(tv)
        if d.test_pos[u] >= 0:
            p = d.test_pos[u]
            assert t[p] >= t_test and (p == 0 or t[p - 1] < t_test)  # the first item at/after the test cut
            test_times.append(t[p])
            np.testing.assert_array_equal(d.history(u, "test"), d.sequence(u)[:p])
    assert max(train_times) < min(valid_times) <= max(valid_times) < min(test_times)
    # evaluated users have a target, a history and training interactions; cold-start users are left out
    for split in ("valid", "test"):
        users = d.eval_users(split)
        assert len(users) and (d.train_end[users] >= 1).all() and (d.positions(split)[users] >= 1).all()
    assert len(d.eval_users("test")) < d.n_users
    assert info["test_users"] == len(d.eval_users("test"))
    # a plan on the temporal split evaluates exactly those users
    from llmrec_cli.data.candidates import build_plan

    plan = build_plan(d, {"seed": 0, "num_negatives": 5, "negative_sampling": "uniform", "pointwise_negatives": 1,
                          "like_threshold": 4.0, "max_users": None})
    np.testing.assert_array_equal(plan["test"].users, d.eval_users("test"))
    np.testing.assert_array_equal(plan["test"].targets, d.targets("test")[d.eval_users("test")])


def test_split_is_part_of_the_dataset_hash_and_key():
    raw = timed_raw(1)
    loo = prepare(raw, cfg())
    temporal = prepare(raw, cfg(split="temporal"))
    later = prepare(raw, cfg(split="temporal", split_time=[0.6, 0.8]))
    assert len({loo.data_hash, temporal.data_hash, later.data_hash}) == 3
    assert len({prep.dataset_key(cfg()), prep.dataset_key(cfg(split="temporal")),
                prep.dataset_key(cfg(split="temporal", split_time=[0.6, 0.8]))}) == 3
    np.testing.assert_array_equal(loo.seq_items, temporal.seq_items)  # same data, another split
    lengths = np.diff(loo.offsets)  # leave-one-out: last = test, second last = valid, the rest trains
    np.testing.assert_array_equal(loo.test_pos, lengths - 1)
    np.testing.assert_array_equal(loo.valid_pos, lengths - 2)
    np.testing.assert_array_equal(loo.train_end, lengths - 2)


def test_temporal_split_needs_timestamps_and_sane_quantiles():
    from llmrec_cli.errors import ConfigError

    positions = timed_raw(2)
    positions.has_time = False  # e.g. ml-1m pairs, user_sequence.txt: times are positions per user
    with pytest.raises(DataError, match="dataset.split=temporal needs timestamps"):
        prepare(positions, cfg(split="temporal"))
    prepare(positions, cfg())  # leave-one-out only needs the order
    for bad in ([0.9, 0.8], [0.0, 0.5], [0.5, 1.0], [0.5]):
        with pytest.raises(ConfigError, match="dataset.split_time"):
            prepare(timed_raw(2), cfg(split="temporal", split_time=bad))
    with pytest.raises(ConfigError, match="dataset.split=weekly"):
        prepare(timed_raw(2), cfg(split="weekly"))


def test_temporal_split_survives_the_cache(tmp_path):
    d = prepare(timed_raw(3), cfg(split="temporal"))
    prep.save(d)
    back = prep.load(d.key)
    for f in ("train_end", "valid_pos", "test_pos", "seq_times", "seq_items"):
        np.testing.assert_array_equal(getattr(back, f), getattr(d, f), err_msg=f)
    assert back.split == "temporal" and back.data_hash == d.data_hash


def test_two_jobs_preparing_one_dataset_on_a_cold_cache_prepare_it_once():
    import threading
    import time

    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.data import load

    cfg = compose_run(["dataset=synthetic"]).dataset
    calls, real = [], load._prepare

    def slow_prepare(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)  # a window in which the other job would prepare (and rename) too
        return real(*args, **kwargs)

    load._prepare = slow_prepare
    try:
        results = [None, None]
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, load.load_prepared(cfg)))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        load._prepare = real
    assert len(calls) == 1  # the second waited for the lock and read the first one's cache
    assert results[0].data_hash == results[1].data_hash
