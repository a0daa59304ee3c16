"""Generic delimited-file loader: one interactions file (`dataset.path`) and an optional items file."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec_cli.data.raw import RawData
from llmrec_cli.data.sources.base import DatasetConfig, hash_files
from llmrec_cli.errors import DataError
from llmrec_cli.registry import register_dataset

# Optional item columns passed through to RawData.items when the items file has them.
EXTRA_ITEM_COLUMNS = ("year", "genres", "categories", "brand")


@dataclass
class CsvConfig(DatasetConfig):
    """Schema for `csv`: `path` is the interactions FILE; column names are configurable."""

    items_path: str | None = None  # items file (same separator); relative paths may be beside `path`
    sep: str = ","
    encoding: str = "utf-8"  # text encoding of both files, e.g. latin-1, cp1252, utf-16
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str | None = "timestamp"  # None: file order is the time order
    rating_col: str | None = None  # None: use a column named "rating" when present
    item_id_col: str = "item_id"  # item id column of the items file
    title_col: str = "title"
    text_cols: list[str] = field(default_factory=list)  # extra item columns joined into `text`


def _read(path: Path, sep: str, key: str, encoding: str = "utf-8") -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, dtype=str, encoding=encoding)
    except UnicodeDecodeError as err:
        raise DataError(f"{key}={path} is not {encoding} text (byte {err.start}: {err.reason}): set "
                        f"dataset.encoding= to the file's encoding, e.g. dataset.encoding=latin-1") from None
    except LookupError:
        raise DataError(f"dataset.encoding={encoding} is not a known text encoding (e.g. utf-8, latin-1, "
                        f"cp1252)") from None
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{key}={path} could not be read as '{sep}'-separated text ({err}): "
                        "check the file and dataset.sep=") from None


def _require(frame: pd.DataFrame, path: Path, wanted: dict[str, str]) -> None:
    """Raise a one-line DataError if columns are missing; WANTED maps config key -> column name."""
    lacking = {k: c for k, c in wanted.items() if c not in frame.columns}
    if lacking:
        keys = " ".join(f"dataset.{k}=" for k in lacking)
        raise DataError(f"{path} lacks columns {list(lacking.values())} (found {list(frame.columns)}): "
                        f"set {keys}")


def _timestamps(values: pd.Series, path: Path, col: str) -> np.ndarray:
    """Integer timestamps from numbers or date strings (as epoch seconds)."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        return numbers.astype("int64").to_numpy()
    try:
        dates = pd.to_datetime(values, utc=True)
    except (ValueError, TypeError):
        dates = None
    if dates is None or dates.isna().any():
        raise DataError(f"{path} column {col!r} holds values that are neither numbers nor dates: "
                        "fix the file or set dataset.time_col=null to use file order")
    return (dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


@register_dataset("csv", schema=CsvConfig, description="any CSV/TSV interactions file (+ optional items file)")
def load_csv(cfg) -> RawData:
    """Read `dataset.path` (interactions) and `dataset.items_path` (item titles and text)."""
    if not cfg.path:
        raise DataError("dataset=csv needs dataset.path=<interactions file>")
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        raise DataError(f"dataset.path={path} does not exist: point dataset.path at an interactions file")
    frame = _read(path, cfg.sep, "dataset.path", cfg.encoding)
    wanted = {"user_col": cfg.user_col, "item_col": cfg.item_col}
    if cfg.time_col:
        wanted["time_col"] = cfg.time_col
    rating_col = cfg.rating_col or ("rating" if "rating" in frame.columns else None)
    if cfg.rating_col:
        wanted["rating_col"] = cfg.rating_col
    _require(frame, path, wanted)
    user, item = frame[cfg.user_col], frame[cfg.item_col]
    if user.isna().any() or item.isna().any():
        raise DataError(f"{path} has {int((user.isna() | item.isna()).sum())} rows with an empty "
                        f"{cfg.user_col!r} or {cfg.item_col!r}: fix the file")
    user = user.str.strip()
    if cfg.time_col:
        ts = _timestamps(frame[cfg.time_col], path, cfg.time_col)
    else:
        ts = user.groupby(user, sort=False).cumcount().to_numpy()
    rating = pd.to_numeric(frame[rating_col], errors="coerce") if rating_col else np.nan
    inter = pd.DataFrame({"user": user, "item": item.str.strip(), "timestamp": np.asarray(ts, dtype="int64"),
                          "rating": rating}).astype({"user": str, "item": str, "rating": "float64"})
    read = [path]
    items = _items(cfg, path, read) if cfg.items_path else pd.DataFrame({"item": [], "title": []})
    known = set(items["item"])
    missing = pd.unique(inter["item"][~inter["item"].isin(known)])
    items = pd.concat([items, pd.DataFrame({"item": missing, "title": missing})], ignore_index=True)
    return RawData(inter, items.astype({"item": str, "title": str}), hash_files(read), has_time=bool(cfg.time_col))


def _items(cfg, inter_path: Path, read: list[Path]) -> pd.DataFrame:
    """Items file: id, title, the optional EXTRA_ITEM_COLUMNS and `text` joined from `text_cols`."""
    path = Path(str(cfg.items_path)).expanduser()
    if not path.is_absolute() and not path.is_file() and (inter_path.parent / path).is_file():
        path = inter_path.parent / path
    if not path.is_file():
        raise DataError(f"dataset.items_path={path} does not exist: point it at an items file or set "
                        "dataset.items_path=null")
    read.append(path)
    meta = _read(path, cfg.sep, "dataset.items_path", cfg.encoding)
    text_cols = [str(c) for c in cfg.text_cols or []]
    wanted = {"item_id_col": cfg.item_id_col, "title_col": cfg.title_col}
    wanted.update({f"text_cols[{i}]": c for i, c in enumerate(text_cols)})
    _require(meta, path, wanted)
    ids = meta[cfg.item_id_col].str.strip()
    items = pd.DataFrame({"item": ids, "title": meta[cfg.title_col].fillna(ids)})  # no title: the id
    for col in EXTRA_ITEM_COLUMNS:
        if col in meta.columns and col not in (cfg.item_id_col, cfg.title_col):
            items[col] = meta[col]
    if "year" in items:
        items["year"] = pd.to_numeric(items["year"], errors="coerce").astype("Int64")
    if text_cols:
        parts = meta[text_cols].fillna("").astype(str)
        items["text"] = parts.apply(lambda row: ". ".join(v.strip() for v in row if v.strip()), axis=1)
    return items.drop_duplicates("item").reset_index(drop=True)
