"""RecBole / UniSRec atomic files: `<stem>.inter` (or `.train/.valid/.test.inter`) plus `.item` or `.text`.

Headers are typed (`user_id:token`, `item_id_list:token_seq`, ...). Sequence rows (history list -> target)
are rebuilt into one chronological sequence per user; timestamps are then positions 0, 1, 2, ...
"""
from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec_cli.data.raw import RawData
from llmrec_cli.data.sources.base import DatasetConfig, hash_files, locate
from llmrec_cli.errors import DataError
from llmrec_cli.registry import register_dataset

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# Atomic item-file fields that map onto RawData.items columns.
ITEM_FIELDS = {"title": "title", "movie_title": "title", "year": "year", "release_year": "year",
               "genre": "genres", "genres": "genres", "class": "genres", "categories": "categories",
               "brand": "brand", "text": "text", "description": "text"}


@dataclass
class AtomicConfig(DatasetConfig):
    """Schema for `atomic`: folder `subdir` under LLMREC_DATA_DIR (or dataset.path), files `<stem>.*`."""

    stem: str | None = None  # file stem, e.g. "Scientific"; default: the folder name
    subdir: str = "atomic"  # folder name under $LLMREC_DATA_DIR and <cache>/raw
    user_field: str = "user_id"
    item_field: str = "item_id"


def read_atomic(path: Path) -> pd.DataFrame:
    """Read a tab-separated atomic file; `field:type` headers become plain `field` columns, values stay str."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    frame.columns = [str(c).split(":", 1)[0] for c in frame.columns]
    return frame


def rebuild_sequence(rows: list[tuple[tuple[str, ...], str]]) -> tuple[list[str], int]:
    """Rebuild one user's sequence from (history, target) rows given in any order.

    Starts from the shortest history; the next row is the one whose history equals the sequence so far (or
    its last `cap` items once histories are capped). Returns (sequence, rows that did not chain).
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    first = rows[order[0]]
    seq = [*first[0], first[1]]
    cap = max(len(h) for h, _ in rows)
    by_history: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i in order[1:]:
        by_history[rows[i][0]].append(i)
    used = 1
    while used < len(rows):
        nxt = by_history.get(tuple(seq[-cap:]) if len(seq) > cap else tuple(seq))
        if not nxt:
            break
        seq.append(rows[nxt.pop(0)][1])
        used += 1
    if used < len(rows):  # inconsistent histories: keep the remaining targets in file order
        seq += [rows[i][1] for i in sorted(i for lst in by_history.values() for i in lst)]
    return seq, len(rows) - used


def _sequences(frame: pd.DataFrame, ufield: str, ifield: str) -> pd.DataFrame:
    """Interactions from sequence rows, users in order of first appearance."""
    rows: dict[str, list] = {}
    for user, hist, target in zip(frame[ufield], frame[ifield + "_list"], frame[ifield], strict=True):
        rows.setdefault(user, []).append((tuple(hist.split()), target))
    users, items, steps, broken = [], [], [], 0
    for user, user_rows in rows.items():
        seq, bad = rebuild_sequence(user_rows)
        broken += bad > 0
        users += [user] * len(seq)
        items += seq
        steps += range(len(seq))
    if broken:
        log.warning("atomic: %d users have sequence rows whose histories do not chain; their remaining "
                    "targets were appended in file order", broken)
    return pd.DataFrame({"user": users, "item": items, "timestamp": np.asarray(steps, dtype="int64"),
                         "rating": np.full(len(items), np.nan)})


def _interactions(frame: pd.DataFrame, ufield: str, ifield: str) -> pd.DataFrame:
    """Interactions from one-row-per-interaction files; missing timestamps become positions per user."""
    user = frame[ufield].astype(str)
    if "timestamp" in frame:
        ts = pd.to_numeric(frame["timestamp"], errors="coerce").fillna(0).astype("int64")
    else:
        ts = user.groupby(user, sort=False).cumcount().astype("int64")
    rating = pd.to_numeric(frame["rating"], errors="coerce") if "rating" in frame else np.nan
    return pd.DataFrame({"user": user, "item": frame[ifield].astype(str), "timestamp": ts,
                         "rating": rating}).astype({"rating": "float64"}).reset_index(drop=True)


def split_unisrec_text(texts: pd.Series) -> pd.DataFrame:
    """Split UniSRec `"<title>. <category path>. <brand>. "` into title / categories / brand.

    Titles and brands may hold ". " themselves, so the category part is found by its root (the most common
    leading words of the middle part of clean three-part texts, e.g. "Industrial & Scientific"). Texts that do
    not split cleanly keep the part before the first ". " as title; the full string stays in `text`.
    """
    parts = [t.strip().removesuffix(".").split(". ") for t in texts]
    roots = Counter(" ".join(p[1].split()[:3]) for p in parts if len(p) == 3 and p[1])
    root = roots.most_common(1)[0][0] if roots else None
    out = []
    for p in parts:
        cat = next((i for i in range(1, len(p)) if root and p[i].startswith(root)), None)
        if cat is None:  # an empty category path, else the plain three-part layout
            cat = next((i for i in range(1, len(p)) if not p[i]), 1 if len(p) == 3 else None)
        if cat is None:
            out.append((p[0], None, None))
        else:
            out.append((". ".join(p[:cat]), p[cat] or None, ". ".join(p[cat + 1:]) or None))
    return pd.DataFrame(out, columns=["title", "categories", "brand"], index=texts.index)


def _items(folder: Path, stem: str, ifield: str, used: set[str], read: list[Path]) -> pd.DataFrame:
    """Item text from `<stem>.item` (typed atomic) or UniSRec `<stem>.text` (+ `<stem>.item2index`).

    USED holds the item ids of the .inter files; ASINs in `.text` are mapped to them through item2index.
    """
    if (folder / f"{stem}.item").is_file():
        read.append(folder / f"{stem}.item")
        meta = read_atomic(folder / f"{stem}.item")
        items = pd.DataFrame({"item": meta[ifield]})
        for src in meta.columns:
            dst = ITEM_FIELDS.get(src)
            if dst and dst not in items and (dst == src or dst not in meta):
                items[dst] = meta[src]
        for col in ("genres", "categories"):
            if col in items:  # token_seq fields are space-separated
                items[col] = items[col].str.split().str.join("|")
    elif (folder / f"{stem}.text").is_file():
        read.append(folder / f"{stem}.text")
        meta = read_atomic(folder / f"{stem}.text")
        text = meta["text"].str.strip()
        items = pd.concat([meta[[ifield]].rename(columns={ifield: "item"}), split_unisrec_text(text)], axis=1)
        items["text"] = text
        index = folder / f"{stem}.item2index"
        if index.is_file() and not items["item"].isin(used).any():
            read.append(index)
            mapping = pd.read_csv(index, sep="\t", header=None, dtype=str, keep_default_na=False)
            ids = items["item"].map(dict(zip(mapping[0], mapping[1], strict=True)))
            items = items.assign(item=ids)[ids.notna()]
    else:
        return pd.DataFrame({"item": pd.Series(dtype=str), "title": pd.Series(dtype=str)})
    if "title" not in items:
        items["title"] = items["item"]
    if "year" in items:
        items["year"] = pd.to_numeric(items["year"], errors="coerce").astype("Int64")
    return items.astype({"item": str, "title": str}).reset_index(drop=True)


@register_dataset("atomic", schema=AtomicConfig, description="RecBole/UniSRec atomic files (.inter + .item/.text)")
def load_atomic(cfg) -> RawData:
    """Load `<stem>.inter` or `<stem>.{train,valid,test}.inter` and the item text beside them."""
    subdir = str(getattr(cfg, "subdir", None) or "atomic")
    stem = getattr(cfg, "stem", None) or Path(str(cfg.path or subdir)).expanduser().name
    folder = locate(cfg, subdir, [(f"{stem}.inter", f"{stem}.train.inter")])
    files = [folder / f"{stem}.inter"] if (folder / f"{stem}.inter").is_file() else \
        [folder / f"{stem}.{s}.inter" for s in SPLITS if (folder / f"{stem}.{s}.inter").is_file()]
    ufield, ifield = str(getattr(cfg, "user_field", "user_id")), str(getattr(cfg, "item_field", "item_id"))
    frames = [read_atomic(f) for f in files]
    frame = pd.concat(frames, ignore_index=True)
    lacking = [c for c in (ufield, ifield) if c not in frame]
    if lacking:
        raise DataError(f"{files[0]} lacks fields {lacking} (found {list(frame.columns)}): set "
                        "dataset.user_field= / dataset.item_field= to the atomic field names")
    if f"{ifield}_list" in frame:
        inter = _sequences(frame, ufield, ifield)
    else:
        inter = _interactions(frame, ufield, ifield)
    has_time = f"{ifield}_list" not in frame and "timestamp" in frame
    read = list(files)
    items = _items(folder, stem, ifield, set(inter["item"]), read)
    return RawData(inter.astype({"user": str, "item": str}), items, hash_files(read), has_time=has_time)
