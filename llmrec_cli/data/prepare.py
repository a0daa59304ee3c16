"""Shared preparation: rating filter, iterative k-core, chronological leave-one-out, item text.

For each user the interactions are ordered by timestamp; ties (frequent: 415 of 943 ML-100K users have several
interactions at their last timestamp) are broken by the original file order, so the split is deterministic.
The last interaction is the test target, the second last the valid target, the rest is training data.
Users with fewer than `min_user_interactions` (>= 3) interactions after filtering are dropped.

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

from llmrec_cli.data.raw import RawData
from llmrec_cli.errors import DataError
from llmrec_cli.utils.io import atomic_write_json, cache_dir, sha256_text

log = logging.getLogger(__name__)
PREP_VERSION = "1"
SPLITS = ("valid", "test")


@dataclass
class PreparedData:
    """Users 0..n_users-1 and items 1..n_items (0 is padding), one chronological sequence per user.

    `seq_items[offsets[u]:offsets[u+1]]` is user u's sequence; its last item is the test target and the one
    before it the valid target. `history(u, split)` is what a method may see when scoring `split`.
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
    stats: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    def sequence(self, u: int) -> np.ndarray:
        return self.seq_items[self.offsets[u] : self.offsets[u + 1]]

    def train_sequence(self, u: int) -> np.ndarray:
        return self.seq_items[self.offsets[u] : self.offsets[u + 1] - 2]

    def history(self, u: int, split: str) -> np.ndarray:
        """Items a method may use to score `split`: train for valid; train + valid target for test."""
        end = self.offsets[u + 1] - (2 if split == "valid" else 1)
        return self.seq_items[self.offsets[u] : end]

    def target(self, u: int, split: str) -> int:
        return int(self.seq_items[self.offsets[u + 1] - (2 if split == "valid" else 1)])

    def targets(self, split: str) -> np.ndarray:
        return self.seq_items[self.offsets[1:] - (2 if split == "valid" else 1)]

    def target_ratings(self, split: str) -> np.ndarray:
        return self.seq_ratings[self.offsets[1:] - (2 if split == "valid" else 1)]

    def train_counts(self) -> np.ndarray:
        """Training-interaction count per item index (length n_items + 1)."""
        mask = np.ones(len(self.seq_items), dtype=bool)
        mask[self.offsets[1:] - 1] = False
        mask[self.offsets[1:] - 2] = False
        return np.bincount(self.seq_items[mask], minlength=self.n_items + 1)

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) arrays of all training interactions."""
        lengths = np.diff(self.offsets)
        users = np.repeat(np.arange(self.n_users), lengths)
        pos = np.arange(len(self.seq_items)) - np.repeat(self.offsets[:-1], lengths)
        keep = pos < np.repeat(lengths - 2, lengths)
        return users[keep], self.seq_items[keep]


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
    stats = {"raw": raw_stats, "prepared": _counts(df), "files": raw.files}
    lengths = np.diff(offsets)
    stats["prepared"]["seq_len_quantiles"] = {
        q: float(np.quantile(lengths, float(q))) for q in ("0.0", "0.25", "0.5", "0.75", "0.9", "1.0")
    }
    data_hash = sha256_text(json.dumps([seq_items.tolist(), list(map(str, user_ids)), list(map(str, item_ids))]))[:16]
    return PreparedData(
        name=name, key=dataset_key(dataset_cfg), data_hash=data_hash,
        user_ids=np.asarray(user_ids, dtype=object), item_ids=np.asarray(["<pad>", *item_ids], dtype=object),
        items=items, seq_items=seq_items, seq_ratings=seq_ratings, offsets=offsets, stats=stats,
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
        pd.DataFrame({
            "user_idx": np.repeat(np.arange(data.n_users), lengths), "item_idx": data.seq_items,
            "rating": data.seq_ratings,
        }).to_parquet(tmp / "sequences.parquet", index=False)
        pd.DataFrame({"user_idx": np.arange(data.n_users), "user": data.user_ids.astype(str)}).to_parquet(
            tmp / "users.parquet", index=False)
        data.items.to_parquet(tmp / "items.parquet", index=False)
        atomic_write_json(tmp / "meta.json", {"name": data.name, "key": data.key, "data_hash": data.data_hash,
                                              "stats": data.stats, "version": PREP_VERSION})
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
        offsets=offsets, stats=meta["stats"],
    )
