"""Shared preparation: rating filter, iterative k-core, the split, item text.

For each user the interactions are ordered by timestamp; ties (frequent: 415 of 943 ML-100K users have several
interactions at their last timestamp) are broken by the original file order, so the split is deterministic.
Users with fewer than `min_user_interactions` (>= 3) interactions after filtering are dropped.

Splits (`dataset.split`), both one target per user and split, stored as positions in the user's sequence:
- `loo` (default): chronological leave-one-out. The last interaction is the test target, the second last the
  valid target, the rest is training data. Every user is evaluated on both splits.
- `temporal`: a global temporal split at the `dataset.split_time` quantiles (q_valid, q_test) of all
  interaction times: training data is every interaction before t_valid, so no training interaction happens
  after a test interaction. A user's valid target is their first interaction in [t_valid, t_test), the test
  target their first at or after t_test (the next-item task at the split boundary, as in Ji et al. 2023, "A
  critical study on data leakage in recommender system offline evaluation"); users without one are not
  evaluated on that split, nor are users without training interactions (cold start). The test history is
  every interaction before the test target (it may include valid-window items the model never trained on).
  Needs real timestamps: datasets whose "time" is a position in the user's sequence refuse it.

Prepared data is cached as parquet under $LLMREC_CACHE_DIR/prepared/<key>/, written atomically, where the key
hashes the dataset config (minus download details), the data location and the preparation version.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec_cli.data.catalogue import Catalogue
from llmrec_cli.data.raw import RawData
from llmrec_cli.data.splits import split_positions, split_settings, split_stats
from llmrec_cli.errors import DataError
from llmrec_cli.utils.io import atomic_write_json, cache_dir, sha256_text

log = logging.getLogger(__name__)
PREP_VERSION = "2"
SPLITS = ("valid", "test")


@dataclass
class PreparedData(Catalogue):
    """Users 0..n_users-1 and items 1..n_items (0 is padding), one chronological sequence per user.

    `seq_items[offsets[u]:offsets[u+1]]` is user u's sequence. Its first `train_end[u]` items are training
    data; `valid_pos[u]` / `test_pos[u]` are the positions of the valid / test target in it (-1: the user has
    none). `history(u, split)` is what a method may see when scoring `split`: everything before the target.

    This object holds the held-out targets: only the evaluator and the plan builder use it. Methods get
    `train_view()` to fit on and the histories the evaluator hands to `score`.
    """

    name: str
    key: str
    data_hash: str
    user_ids: np.ndarray  # raw user id (str) per user index
    item_ids: np.ndarray  # raw item id (str) per item index; item_ids[0] = "<pad>"
    items: pd.DataFrame  # item_idx, item, title, text, (year, genres, categories, brand)
    seq_items: np.ndarray  # int64, all users' sequences concatenated
    seq_ratings: np.ndarray  # float64 (NaN where the data has no rating)
    offsets: np.ndarray  # int64 [n_users + 1]
    train_end: np.ndarray  # int64 [n_users]: training items per user (a prefix of the sequence)
    valid_pos: np.ndarray  # int64 [n_users]: position of the valid target, -1 when none
    test_pos: np.ndarray  # int64 [n_users]: position of the test target, -1 when none
    seq_times: np.ndarray | None = None  # int64 timestamps (positions for data without time)
    split: str = "loo"
    stats: dict = field(default_factory=dict)

    @property
    def has_ratings(self) -> bool:
        return bool(np.isfinite(self.seq_ratings).any())

    @property
    def has_item_text(self) -> bool:
        """Whether any item has a title of its own (a dataset without text has each item's id as its title)."""
        return has_item_text(self.items)

    def sequence(self, u: int) -> np.ndarray:
        return self.seq_items[self.offsets[u] : self.offsets[u + 1]]

    def train_sequence(self, u: int) -> np.ndarray:
        return self.seq_items[self.offsets[u] : self.offsets[u] + self.train_end[u]]

    def positions(self, split: str) -> np.ndarray:
        """Per user, the position of SPLIT's target in the user's sequence (-1: none)."""
        if split == "valid":
            return self.valid_pos
        if split == "test":
            return self.test_pos
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")

    def eval_users(self, split: str) -> np.ndarray:
        """Users evaluated on SPLIT: they have its target, a history before it and training interactions."""
        pos = self.positions(split)
        return np.flatnonzero((pos >= 1) & (self.train_end >= 1))

    def history(self, u: int, split: str) -> np.ndarray:
        """Items a method may use to score `split`: every interaction before the split's target."""
        pos = int(self.positions(split)[u])
        if pos < 0:
            raise ValueError(f"user {u} has no {split} target")
        return self.seq_items[self.offsets[u] : self.offsets[u] + pos]

    def target(self, u: int, split: str) -> int:
        pos = int(self.positions(split)[u])
        if pos < 0:
            raise ValueError(f"user {u} has no {split} target")
        return int(self.seq_items[self.offsets[u] + pos])

    def targets(self, split: str) -> np.ndarray:
        """Per user, SPLIT's target item (0 where the user has none)."""
        pos = self.positions(split)
        idx = self.offsets[:-1] + np.maximum(pos, 0)
        return np.where(pos >= 0, self.seq_items[np.minimum(idx, len(self.seq_items) - 1)], 0)

    def target_ratings(self, split: str) -> np.ndarray:
        """Per user, the rating of SPLIT's target (NaN where the user has none or the data has no ratings)."""
        pos = self.positions(split)
        idx = self.offsets[:-1] + np.maximum(pos, 0)
        return np.where(pos >= 0, self.seq_ratings[np.minimum(idx, len(self.seq_items) - 1)], np.nan)

    def train_mask(self) -> np.ndarray:
        """[len(seq_items)] True at training interactions (each user's first `train_end` items)."""
        lengths = np.diff(self.offsets)
        pos = np.arange(len(self.seq_items)) - np.repeat(self.offsets[:-1], lengths)
        return pos < np.repeat(self.train_end, lengths)

    def train_counts(self) -> np.ndarray:
        """Training-interaction count per item index (length n_items + 1)."""
        return np.bincount(self.seq_items[self.train_mask()], minlength=self.n_items + 1)

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) arrays of all training interactions."""
        users = np.repeat(np.arange(self.n_users), np.diff(self.offsets))
        keep = self.train_mask()
        return users[keep], self.seq_items[keep]

    def train_view(self):
        """The training-only view methods fit on (`llmrec_cli.data.views.TrainView`)."""
        from llmrec_cli.data.views import TrainView

        return TrainView.of(self)


def has_item_text(items: pd.DataFrame) -> bool:
    return bool((items["title"].astype(str) != items["item"].astype(str)).any())


def dataset_key(dataset_cfg: dict) -> str:
    """Cache key of prepared data: the config minus download details, the version, and the size and mtime
    of the local source files (so editing a file in place invalidates the cache)."""
    cfg = {k: v for k, v in dataset_cfg.items() if k not in ("url", "sha256", "item_noun")}
    return sha256_text(json.dumps([PREP_VERSION, cfg, _source_stat(dataset_cfg)], sort_keys=True))[:16]


def _source_stat(cfg: dict) -> list:
    """(name, size, mtime) of the files at dataset.path, or at $LLMREC_DATA_DIR/<subdir or name>."""
    root = os.environ.get("LLMREC_DATA_DIR")
    candidates = [cfg.get("path"), cfg.get("items_path")]
    if root:
        candidates.append(os.path.join(root, cfg.get("subdir") or cfg.get("name") or ""))
    out = []
    for c in filter(None, candidates):
        p = Path(c).expanduser()
        files = sorted(p.iterdir()) if p.is_dir() else [p] if p.is_file() else []
        out += [[str(f), f.stat().st_size, int(f.stat().st_mtime)] for f in files if f.is_file()]
    return out


def prepare(raw: RawData, dataset_cfg: dict) -> PreparedData:
    """Filter, k-core, order and index RAW; pure function of its inputs (no caching here)."""
    name = dataset_cfg["name"]
    df = raw.interactions.reset_index(drop=True)
    df = pd.DataFrame({
        "user": df["user"].astype(str).to_numpy(object), "item": df["item"].astype(str).to_numpy(object),
        "timestamp": df["timestamp"].astype("int64").to_numpy(), "rating": df["rating"].astype("float64").to_numpy(),
        "order": np.arange(len(df), dtype=np.int64),
    })
    raw_stats = _counts(df)
    split, split_time = split_settings(dataset_cfg)
    if split == "temporal" and not raw.has_time:
        raise DataError(f"dataset.split=temporal needs timestamps, but dataset={name} has only the order of each "
                        f"user's interactions: use dataset.split=loo")
    min_rating = dataset_cfg.get("min_rating")
    if min_rating is not None:
        if df["rating"].isna().all():
            raise DataError(f"dataset.min_rating={min_rating} but dataset={name} has no ratings: set dataset.min_rating=null")
        df = df[df["rating"] >= float(min_rating)]
    df = _kcore(df, int(dataset_cfg.get("kcore") or 0))
    counts = df.groupby("user").size()
    df = df[df["user"].isin(counts.index[counts >= int(dataset_cfg.get("min_user_interactions", 3))])]
    if df.empty:
        raise DataError(f"dataset={name}: no users left after min_rating/kcore filtering; lower dataset.kcore")

    user_ids = _sorted_ids(df["user"].unique())
    item_ids = _sorted_ids(df["item"].unique())
    uidx = pd.Series(np.arange(len(user_ids)), index=user_ids)
    iidx = pd.Series(np.arange(1, len(item_ids) + 1), index=item_ids)
    df = df.assign(u=uidx.loc[df["user"].to_numpy()].to_numpy(), i=iidx.loc[df["item"].to_numpy()].to_numpy())
    df = df.sort_values(["u", "timestamp", "order"], kind="stable")
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(df["u"].to_numpy(), minlength=len(user_ids)))

    items = _item_table(raw.items, item_ids)
    seq_items = df["i"].to_numpy(np.int64)
    seq_ratings = df["rating"].to_numpy(np.float64)
    seq_times = df["timestamp"].to_numpy(np.int64)
    train_end, valid_pos, test_pos, split_info = split_positions(offsets, seq_times, split, split_time)
    stats = {"raw": raw_stats, "prepared": _counts(df), "files": raw.files, "has_time": bool(raw.has_time),
             "split": {**split_info, **split_stats(train_end, valid_pos, test_pos)}}
    lengths = np.diff(offsets)
    stats["prepared"]["seq_len_quantiles"] = {
        q: float(np.quantile(lengths, float(q))) for q in ("0.0", "0.25", "0.5", "0.75", "0.9", "1.0")
    }
    data_hash = sha256_text(json.dumps([seq_items.tolist(), list(map(str, user_ids)), list(map(str, item_ids)),
                                        split, train_end.tolist(), valid_pos.tolist(), test_pos.tolist()]))[:16]
    return PreparedData(
        name=name, key=dataset_key(dataset_cfg), data_hash=data_hash,
        user_ids=np.asarray(user_ids, dtype=object), item_ids=np.asarray(["<pad>", *item_ids], dtype=object),
        items=items, seq_items=seq_items, seq_ratings=seq_ratings, offsets=offsets, train_end=train_end,
        valid_pos=valid_pos, test_pos=test_pos, seq_times=seq_times, split=split, stats=stats,
    )


def _counts(df: pd.DataFrame) -> dict:
    n_u, n_i, n = int(df["user"].nunique()), int(df["item"].nunique()), int(len(df))
    return {"users": n_u, "items": n_i, "interactions": n, "density": n / max(1, n_u * n_i)}


def _kcore(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively drop items with < k distinct users and users with < k distinct items until stable."""
    if k <= 1:
        return df
    while True:
        item_users = df.groupby("item")["user"].nunique()
        user_items = df.groupby("user")["item"].nunique()
        bad_items = item_users.index[item_users < k]
        bad_users = user_items.index[user_items < k]
        if len(bad_items) == 0 and len(bad_users) == 0:
            return df
        df = df[~df["item"].isin(bad_items) & ~df["user"].isin(bad_users)]


def _sorted_ids(values) -> list[str]:
    """Numeric ids sort as numbers, others as strings (deterministic index assignment)."""
    values = [str(v) for v in values]
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def _item_table(raw_items: pd.DataFrame, item_ids: list[str]) -> pd.DataFrame:
    meta = raw_items.copy()
    meta["item"] = meta["item"].astype(str)
    meta = meta.drop_duplicates("item").set_index("item")
    out = pd.DataFrame({"item_idx": np.arange(1, len(item_ids) + 1), "item": item_ids})
    out = out.join(meta, on="item")
    out["title"] = out["title"].where(out["title"].notna() & (out["title"].astype(str) != ""), out["item"]).astype(str)
    if "text" not in out.columns or out["text"].isna().any():
        built = out.apply(_describe, axis=1)
        out["text"] = out["text"].fillna(built) if "text" in out.columns else built
    return out.reset_index(drop=True)


def _describe(row) -> str:
    """Item text for LLMs when the data has none: 'Title (year); genres; brand'."""
    parts = [str(row["title"]) + (f" ({int(row['year'])})" if pd.notna(row.get("year", None)) else "")]
    for col in ("genres", "categories", "brand"):
        value = row.get(col, None)
        if isinstance(value, str) and value:
            parts.append(value.replace("|", ", "))
    return "; ".join(parts)


# ---- cache -----------------------------------------------------------------------------------------------

def cache_path(key: str) -> Path:
    return cache_dir() / "prepared" / key


def save(data: PreparedData) -> Path:
    """Write to a temp folder, then rename it into place (a crash never leaves a half-written cache)."""
    final = cache_path(data.key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data.key}.", dir=final.parent))
    try:
        lengths = np.diff(data.offsets)
        times = data.seq_times if data.seq_times is not None else np.zeros(len(data.seq_items), dtype=np.int64)
        pd.DataFrame({
            "user_idx": np.repeat(np.arange(data.n_users), lengths), "item_idx": data.seq_items,
            "rating": data.seq_ratings, "timestamp": times,
        }).to_parquet(tmp / "sequences.parquet", index=False)
        pd.DataFrame({"user_idx": np.arange(data.n_users), "user": data.user_ids.astype(str),
                      "train_end": data.train_end, "valid_pos": data.valid_pos, "test_pos": data.test_pos}).to_parquet(
            tmp / "users.parquet", index=False)
        data.items.to_parquet(tmp / "items.parquet", index=False)
        atomic_write_json(tmp / "meta.json", {"name": data.name, "key": data.key, "data_hash": data.data_hash,
                                              "split": data.split, "stats": data.stats, "version": PREP_VERSION})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load(key: str) -> PreparedData | None:
    path = cache_path(key)
    if not (path / "meta.json").is_file():
        return None
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("version") != PREP_VERSION:
        return None
    seqs = pd.read_parquet(path / "sequences.parquet")
    users = pd.read_parquet(path / "users.parquet")
    items = pd.read_parquet(path / "items.parquet")
    n_users = len(users)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(seqs["user_idx"].to_numpy(), minlength=n_users))
    return PreparedData(
        name=meta["name"], key=meta["key"], data_hash=meta["data_hash"],
        user_ids=users["user"].to_numpy(dtype=object),
        item_ids=np.asarray(["<pad>", *items["item"].astype(str)], dtype=object), items=items,
        seq_items=seqs["item_idx"].to_numpy(np.int64), seq_ratings=seqs["rating"].to_numpy(np.float64),
        offsets=offsets, train_end=users["train_end"].to_numpy(np.int64),
        valid_pos=users["valid_pos"].to_numpy(np.int64), test_pos=users["test_pos"].to_numpy(np.int64),
        seq_times=seqs["timestamp"].to_numpy(np.int64), split=meta["split"], stats=meta["stats"],
    )
