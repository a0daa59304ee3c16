"""Dataset loaders on hand-made fixtures, `locate` search order and download checks, plus one slow real-data test."""
from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from llmrec_cli.data.raw import RawData
from llmrec_cli.data.sources import base
from llmrec_cli.data.sources.atomic import AtomicConfig, load_atomic, rebuild_sequence
from llmrec_cli.data.sources.base import DatasetConfig, locate
from llmrec_cli.data.sources.csv import CsvConfig, load_csv
from llmrec_cli.data.sources.movielens import MovieLensConfig, load_ml_1m, load_ml_100k
from llmrec_cli.data.sources.synthetic import SyntheticConfig, load_synthetic
from llmrec_cli.errors import DataError
from llmrec_cli.registry import DATASETS

FIX = Path(__file__).resolve().parents[1] / "fixtures"
REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test sees the user's data or cache folders."""
    monkeypatch.delenv("LLMREC_DATA_DIR", raising=False)
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))


def check_contract(raw: RawData) -> None:
    inter = raw.interactions
    assert list(inter.columns[:4]) == ["user", "item", "timestamp", "rating"]
    assert pd.api.types.is_string_dtype(inter["user"]) and pd.api.types.is_string_dtype(inter["item"])
    assert inter["timestamp"].dtype == "int64" and inter["rating"].dtype == "float64"
    assert pd.api.types.is_string_dtype(raw.items["item"]) and pd.api.types.is_string_dtype(raw.items["title"])
    if "year" in raw.items:
        assert raw.items["year"].dtype == "Int64"
    for path, digest in raw.files.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest


def test_registry_and_schemas():
    for name in ("ml-100k", "ml-1m", "atomic", "csv", "synthetic"):
        schema = DATASETS[name].info["schema"]
        assert issubclass(schema, DatasetConfig)
        cfg = OmegaConf.structured(schema)
        assert OmegaConf.is_missing(cfg, "name") and cfg.kcore == 5 and cfg.min_user_interactions == 3


def test_ml_100k_fixture():
    raw = load_ml_100k(MovieLensConfig(name="ml-100k", loader="ml-100k", path=str(FIX / "ml-100k")))
    check_contract(raw)
    lines = (FIX / "ml-100k" / "u.data").read_text().splitlines()
    assert len(raw.interactions) == len(lines) == 30
    first = lines[0].split("\t")
    assert raw.interactions.iloc[0].tolist() == [first[0], first[1], int(first[3]), float(first[2])]
    items = raw.items.set_index("item")
    assert items.loc["2", "title"] == "Café Noir, Le" and items.loc["6", "title"] == "Señor Tomato"
    assert items.loc["1", "year"] == 1995 and pd.isna(items.loc["4", "year"])
    assert items.loc["5", "title"] == "Dinosaur Valley III: The Return" and items.loc["5", "year"] == 1997
    assert items.loc["1", "genres"] == "Animation|Children's|Comedy"
    assert set(raw.files) == {str(FIX / "ml-100k" / n) for n in ("u.data", "u.item", "u.genre")}


def test_ml_1m_fixture():
    raw = load_ml_1m(MovieLensConfig(name="ml-1m", loader="ml-1m", path=str(FIX / "ml-1m")))
    check_contract(raw)
    lines = (FIX / "ml-1m" / "ratings.dat").read_text().splitlines()
    expected = [line.split("::") for line in lines]
    got = raw.interactions
    assert got["user"].tolist() == [e[0] for e in expected] and got["item"].tolist() == [e[1] for e in expected]
    assert got["rating"].tolist() == [float(e[2]) for e in expected]
    assert got["timestamp"].tolist() == [int(e[3]) for e in expected]
    items = raw.items.set_index("item")
    assert items.loc["2", "title"] == "Été Éternel" and items.loc["8", "title"] == "Garçon Stupide"
    assert items.loc["3", "title"] == "Star Cruise: The Fake Voyage" and items.loc["3", "year"] == 1979
    assert items.loc["3", "genres"] == "Action|Sci-Fi"


def test_ml_1m_implicit_fallback(tmp_path, caplog):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    shutil.copy(FIX / "ml-1m" / "movies.dat", folder)
    pd.DataFrame({"userID": ["2", "1", "2"], "movieID": ["5", "1", "3"]}).to_parquet(folder / "ratings.parquet")
    raw = load_ml_1m(MovieLensConfig(name="ml-1m", loader="ml-1m", path=str(folder)))
    check_contract(raw)
    assert raw.interactions["timestamp"].tolist() == [0, 0, 1]
    assert raw.interactions["rating"].isna().all()
    assert "file order" in caplog.text


def test_atomic_interaction_rows():
    raw = load_atomic(AtomicConfig(name="tiny", loader="atomic", path=str(FIX / "atomic" / "tiny")))
    check_contract(raw)
    inter = raw.interactions
    assert len(inter) == 12 and inter["user"].tolist()[:4] == ["ua"] * 4
    assert inter["item"].tolist()[:4] == ["i1", "i3", "i2", "i5"]
    assert inter["rating"].tolist()[:2] == [1.0, 2.0] and inter["timestamp"].iloc[1] == 1500000102
    items = raw.items.set_index("item")
    assert items.loc["i1", "title"] == 'The "Blue" Kettle' and items.loc["i1", "brand"] == "Acme"
    assert items.loc["i1", "year"] == 2001 and pd.isna(items.loc["i3", "year"])
    assert items.loc["i2", "categories"] == "Furniture|Chairs"


def test_atomic_unisrec_sequences():
    raw = load_atomic(AtomicConfig(name="seq", loader="atomic", path=str(FIX / "atomic" / "seq")))
    check_contract(raw)
    seqs = raw.interactions.groupby("user", sort=False)["item"].apply(list).to_dict()
    assert seqs == {"0": list("012345"), "1": list("67893"), "2": list("2571968")}
    assert raw.interactions.groupby("user")["timestamp"].apply(list).to_dict()["1"] == [0, 1, 2, 3, 4]
    assert raw.interactions["rating"].isna().all()
    items = raw.items.set_index("item")
    assert len(items) == 10 and set(items.index) == {str(i) for i in range(10)}
    assert items.loc["1", "title"] == "No. 5 Steel Clamp" and items.loc["1", "brand"] == "Clampy"
    assert items.loc["0", "categories"] == "Fake & Science Labware Beakers"
    assert items.loc["2", "title"] == "Safety Goggles" and pd.isna(items.loc["2", "categories"])
    assert items.loc["2", "brand"] == "Mr. Safe" and pd.isna(items.loc["4", "brand"])
    assert items.loc["0", "text"] == "Glass Beaker 250 ml. Fake & Science Labware Beakers. Acme Lab."


def test_rebuild_sequence_any_row_order():
    rows = [(("a", "b"), "c"), (("a",), "b"), (("b", "c"), "d"), (("c", "d"), "e")]  # capped at 2
    assert rebuild_sequence(rows) == (list("abcde"), 0)


def test_csv_loader():
    cfg = CsvConfig(name="c", loader="csv", path=str(FIX / "csv" / "interactions.csv"), items_path="items.csv",
                    text_cols=["description", "brand"])
    raw = load_csv(cfg)
    check_contract(raw)
    inter = raw.interactions
    assert inter["user"].tolist()[:3] == ["alice", "bob", "alice"] and inter["rating"].tolist()[0] == 4.0
    assert inter["timestamp"].tolist()[:2] == [1000, 1005]
    items = raw.items.set_index("item")
    assert items.loc["m1", "text"] == "A lamp, made of moss. Greeny" and items.loc["m3", "text"] == "Tempo"
    assert items.loc["m4", "title"] == "m4" and items.loc["m1", "year"] == 2019


def test_csv_file_order_and_no_items():
    cfg = CsvConfig(name="c", loader="csv", path=str(FIX / "csv" / "interactions.csv"), time_col=None)
    raw = load_csv(cfg)
    assert raw.interactions["timestamp"].tolist()[:5] == [0, 0, 1, 0, 1]
    assert (raw.items["title"] == raw.items["item"]).all() and len(raw.items) == 4


@pytest.mark.parametrize("overrides, match", [
    ({"path": None}, "dataset=csv needs dataset.path="),
    ({"path": "/nonexistent/x.csv"}, "dataset.path=/nonexistent/x.csv does not exist"),
    ({"user_col": "uid"}, r"lacks columns \['uid'\].*found.*dataset\.user_col="),
    ({"rating_col": "stars", "time_col": "when"}, r"dataset\.time_col= dataset\.rating_col="),
    ({"items_path": "items.csv", "title_col": "name"}, r"items\.csv lacks columns \['name'\].*dataset\.title_col="),
])
def test_csv_errors(overrides, match):
    cfg = CsvConfig(name="c", loader="csv", path=str(FIX / "csv" / "interactions.csv"))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    with pytest.raises(DataError, match=match) as err:
        load_csv(cfg)
    assert "\n" not in str(err.value)


def test_synthetic_deterministic_and_learnable():
    cfg = SyntheticConfig(name="s", loader="synthetic")
    a, b = load_synthetic(cfg), load_synthetic(cfg)
    check_contract(a)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    other = load_synthetic(SyntheticConfig(name="s", loader="synthetic", data_seed=1))
    assert not a.interactions.equals(other.interactions)
    inter = a.interactions
    sizes = inter.groupby("user").size()
    assert sizes.min() >= cfg.min_len and sizes.max() <= cfg.max_len and len(sizes) == cfg.num_users
    assert inter.groupby("user")["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()
    assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert _kcore(inter, 5) >= 0.9 * len(inter)
    # A first-order Markov model beats popularity on each user's last item.
    train, last = inter.groupby("user").head(-1), inter.groupby("user").tail(1)
    succ, pop = defaultdict(Counter), [i for i, _ in Counter(train["item"]).most_common(10)]
    for seq in train.groupby("user")["item"].apply(list):
        for x, y in zip(seq, seq[1:], strict=False):
            succ[x][y] += 1
    prev = train.groupby("user")["item"].last()
    markov = sum(t in [i for i, _ in succ[prev[u]].most_common(10)] for u, t in zip(last["user"], last["item"], strict=True))
    popular = sum(t in pop for t in last["item"])
    assert markov > 2 * popular


def _kcore(inter: pd.DataFrame, k: int) -> int:
    while True:
        keep = (inter.groupby("item")["user"].transform("size") >= k) & \
               (inter.groupby("user")["item"].transform("size") >= k)
        if keep.all():
            return len(inter)
        inter = inter[keep]


# ---- locate: search order, errors, download + verify + extract


def _cfg(**kw) -> DatasetConfig:
    return DatasetConfig(name="x", loader="x", **kw)


def _folder(path: Path, content: str = "x") -> Path:
    path.mkdir(parents=True)
    (path / "need.txt").write_text(content)
    return path


def test_locate_order(tmp_path, monkeypatch):
    mine, shared = _folder(tmp_path / "mine"), _folder(tmp_path / "data" / "sub")
    monkeypatch.setenv("LLMREC_DATA_DIR", str(tmp_path / "data"))
    assert locate(_cfg(path=str(mine)), "sub", ["need.txt"]) == mine
    assert locate(_cfg(), "sub", ["need.txt"]) == shared
    cached = _folder(tmp_path / "cache" / "raw" / "other")
    assert locate(_cfg(), "other", ["need.txt"]) == cached
    assert locate(_cfg(), "other", [("missing.txt", "need.txt")]) == cached


def test_locate_errors(tmp_path):
    with pytest.raises(DataError, match=r"dataset\.path=.*nope"):
        locate(_cfg(path=str(tmp_path / "nope")), "sub", ["need.txt"])
    with pytest.raises(DataError, match=r"dataset\.path=.*lacks other\.txt"):
        locate(_cfg(path=str(_folder(tmp_path / "p"))), "sub", ["need.txt", "other.txt"])
    with pytest.raises(DataError, match="LLMREC_DATA_DIR"):
        locate(_cfg(), "sub", ["need.txt"])
    with pytest.raises(DataError, match="LLMREC_DATA_DIR"):
        locate(_cfg(url=(tmp_path / "absent.zip").as_uri()), "sub", ["need.txt"])


def _zip(tmp_path: Path, top: str) -> tuple[Path, str]:
    archive = tmp_path / "upload" / f"{top}.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{top}/need.txt", "downloaded")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_locate_download_verify_extract(tmp_path):
    archive, digest = _zip(tmp_path, "sub")
    folder = locate(_cfg(url=archive.as_uri(), sha256=digest), "sub", ["need.txt"])
    assert folder == tmp_path / "cache" / "raw" / "sub"
    assert (folder / "need.txt").read_text() == "downloaded"
    archive.unlink()  # the second call uses the cache
    assert locate(_cfg(url=archive.as_uri(), sha256=digest), "sub", ["need.txt"]) == folder
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_locate_sha256_mismatch(tmp_path):
    archive, _ = _zip(tmp_path, "sub")
    with pytest.raises(DataError, match="sha256 mismatch"):
        locate(_cfg(url=archive.as_uri(), sha256="0" * 64), "sub", ["need.txt"])
    assert not (tmp_path / "cache" / "raw" / "sub.zip").exists()
    assert not (tmp_path / "cache" / "raw" / "sub").exists()


def test_ml_100k_download_uses_url(tmp_path):
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("u.data", "u.item"):
            zf.write(FIX / "ml-100k" / name, f"ml-100k/{name}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    raw = load_ml_100k(MovieLensConfig(name="ml-100k", loader="ml-100k", url=archive.as_uri(), sha256=digest))
    assert len(raw.interactions) == 30 and base.cache_dir() == tmp_path / "cache"


@pytest.mark.slow
def test_real_data():
    if not REAL.is_dir():
        pytest.skip("../shared/data is absent")
    raw = load_ml_100k(MovieLensConfig(name="ml-100k", loader="ml-100k", path=str(REAL / "ml-100k")))
    inter = raw.interactions
    assert (len(inter), inter["user"].nunique(), inter["item"].nunique(), len(raw.items)) == (100000, 943, 1682, 1682)
    assert raw.items.set_index("item").loc["1", "title"] == "Toy Story"
    folder = REAL / "amazon-scientific-unisrec"
    raw = load_atomic(AtomicConfig(name="amazon-scientific", loader="atomic", path=str(folder), stem="Scientific"))
    check_contract(raw)
    inter = raw.interactions
    assert (inter["user"].nunique(), inter["item"].nunique(), len(inter)) == (8442, 4385, 59427)
    seqs = inter.groupby("user")["item"].apply(list)
    for split, pos in (("test", -1), ("valid", -2)):
        rows = pd.read_csv(folder / f"Scientific.{split}.inter", sep="\t", dtype=str)
        targets = dict(zip(rows.iloc[:, 0], rows.iloc[:, 2], strict=True))
        assert all(seqs[u][pos] == t for u, t in targets.items())
        assert all(seqs[u][:pos][-len(h.split()):] == h.split() for u, h in zip(rows.iloc[:, 0], rows.iloc[:, 1], strict=True))
    assert seqs["0"] == [str(i) for i in range(14)]
    assert set(raw.items["item"]) == set(inter["item"]) and raw.items["title"].str.len().min() > 0


def test_csv_encoding_is_a_key_and_a_wrong_one_is_named(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("user_id,item_id,timestamp\nzoë,café,1\nzoë,naïve,2\nbob,café,3\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv is not utf-8 text .*dataset.encoding=latin-1") as err:
        load_csv(CsvConfig(name="c", loader="csv", path=str(path)))
    assert "\n" not in str(err.value)
    raw = load_csv(CsvConfig(name="c", loader="csv", path=str(path), encoding="latin-1"))
    assert sorted(set(raw.interactions["item"])) == ["café", "naïve"]
    with pytest.raises(DataError, match="dataset.encoding=klingon is not a known"):
        load_csv(CsvConfig(name="c", loader="csv", path=str(path), encoding="klingon"))


# ---- user_sequence.txt (P5 / TIGER format) ----------------------------------------------------------------------

def _user_sequence_cfg(**over):
    from llmrec_cli.data.sources.user_sequence import UserSequenceConfig

    return OmegaConf.structured(UserSequenceConfig(name="user-sequence", loader="user-sequence", kcore=0, **over))


def test_user_sequence_reads_lines_in_order_without_text():
    from llmrec_cli.data.sources.user_sequence import load_user_sequence

    raw = load_user_sequence(_user_sequence_cfg(path=str(FIX / "user-sequence")))
    check_contract(raw)
    lines = [line.split() for line in (FIX / "user-sequence" / "user_sequence.txt").read_text().splitlines()]
    assert len(raw.interactions) == sum(len(f) - 1 for f in lines) and not raw.has_time
    first = raw.interactions[raw.interactions["user"] == lines[0][0]]
    assert first["item"].tolist() == lines[0][1:] and first["timestamp"].tolist() == list(range(len(lines[0]) - 1))
    assert raw.items.empty and raw.interactions["rating"].isna().all()


def test_user_sequence_joins_json_lines_and_python_literal_metadata():
    from llmrec_cli.data.prepare import has_item_text, prepare
    from llmrec_cli.data.sources.user_sequence import load_user_sequence

    cfg = _user_sequence_cfg(path=str(FIX / "user-sequence" / "user_sequence.txt"),
                             items_path=str(FIX / "user-sequence" / "meta.jsonl"))
    raw = load_user_sequence(cfg)
    meta = raw.items.set_index("item")
    assert meta.loc["B0003", "title"] == "Serum number 3"
    assert meta.loc["B0003", "categories"] == "Beauty, Skin Care" and meta.loc["B0003", "brand"] == "Acme"
    data = prepare(raw, OmegaConf.to_container(cfg))
    assert data.has_item_text and has_item_text(data.items)
    titles = data.items.set_index("item")["title"]
    assert titles["B0009"] == "B0009"  # no metadata: the id stands in
    old = load_user_sequence(_user_sequence_cfg(path=str(FIX / "user-sequence"),
                                                items_path=str(FIX / "user-sequence" / "meta_py.json")))
    assert old.items.set_index("item").loc["B0000", "title"] == "Old-style dump"


@pytest.mark.parametrize("content, match", [("U1 a b c\nU1 d e f\n", "second line"), ("\n\n", "no interactions")])
def test_user_sequence_errors(tmp_path, content, match):
    from llmrec_cli.data.sources.user_sequence import load_user_sequence

    (tmp_path / "user_sequence.txt").write_text(content)
    with pytest.raises(DataError, match=match):
        load_user_sequence(_user_sequence_cfg(path=str(tmp_path)))
    with pytest.raises(DataError, match="item_key"):
        (tmp_path / "user_sequence.txt").write_text("U1 a b c\n")
        (tmp_path / "m.csv").write_text("id,title\na,A\n")
        load_user_sequence(_user_sequence_cfg(path=str(tmp_path), items_path=str(tmp_path / "m.csv")))


def test_amazon_beauty_keeps_its_published_statistics(monkeypatch):
    """The P5/TIGER Beauty split: 22,363 users, 12,101 items, 198,502 interactions, before and after preparation
    (the preset does not re-filter the 5-core file), leave-one-out on every user."""
    if not (REAL / "amazon-beauty-2014-5core-seq").is_dir():
        pytest.skip("../shared/data/amazon-beauty-2014-5core-seq is absent")
    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.data.load import load_prepared

    monkeypatch.setenv("LLMREC_DATA_DIR", str(REAL))
    data = load_prepared(compose_run(["dataset=amazon-beauty"]).dataset, progress=False)
    for stage in ("raw", "prepared"):
        counts = data.stats[stage]
        assert (counts["users"], counts["items"], counts["interactions"]) == (22363, 12101, 198502), stage
    assert len(data.eval_users("test")) == len(data.eval_users("valid")) == 22363
    assert int(data.train_end.sum()) == 198502 - 2 * 22363
    assert not data.has_item_text
