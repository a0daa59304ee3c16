"""The `user_sequence.txt` format of P5, OpenP5, IDGenRec, GRAM and TIGER: one line per user.

Each line is `user item_1 item_2 ... item_n` (whitespace-separated, oldest first); there are no ratings and no
timestamps, so the "time" of an interaction is its position in the line and only `split=loo` applies. Item text
is optional: `dataset.items_path=` joins it from a metadata file keyed by item id, either JSON lines (one object
per item, e.g. the Amazon `meta_*.json` files with `asin`, `title`, `brand`, `categories`) or CSV/TSV. Without
it every item's title is its id and LLM methods refuse the dataset (see `PreparedData.has_item_text`).
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec_cli.data.raw import RawData
from llmrec_cli.data.sources.base import DatasetConfig, hash_files, locate
from llmrec_cli.errors import DataError
from llmrec_cli.registry import register_dataset

#: Metadata fields that map onto RawData.items columns (first present wins).
META_FIELDS = {"title": ("title", "name"), "brand": ("brand",), "categories": ("categories", "category"),
               "text": ("description", "text")}


@dataclass
class UserSequenceConfig(DatasetConfig):
    """Schema for `user-sequence`: `<subdir>/<file>` under LLMREC_DATA_DIR, or dataset.path (folder or file)."""

    subdir: str = "user-sequence"  # folder name under $LLMREC_DATA_DIR and <cache>/raw
    file: str = "user_sequence.txt"
    items_path: str | None = None  # optional item metadata: JSON lines or CSV/TSV, keyed by `item_key`
    item_key: str = "asin"  # the id field of the metadata file (JSON key or CSV column)


def read_user_sequences(path: Path) -> pd.DataFrame:
    """Interactions in file order: `timestamp` is the position within the user's line."""
    users, items, steps = [], [], []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            user, seq = fields[0], fields[1:]
            if user in seen:
                raise DataError(f"{path}:{number}: user {user} has a second line; each user must have one line "
                                "`user item_1 ... item_n`")
            seen.add(user)
            users += [user] * len(seq)
            items += seq
            steps += range(len(seq))
    if not items:
        raise DataError(f"{path} holds no interactions: each line must be `user item_1 item_2 ...`")
    return pd.DataFrame({"user": users, "item": items, "timestamp": np.asarray(steps, dtype="int64"),
                         "rating": np.full(len(items), np.nan)})


def _json_records(path: Path) -> list[dict]:
    """JSON lines; also the Python-literal lines of the 2014 Amazon metadata dumps (`{'asin': ...}`)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                try:
                    records.append(ast.literal_eval(line))
                except (ValueError, SyntaxError):
                    raise DataError(f"dataset.items_path={path}:{number} is neither JSON nor a Python dict "
                                    "literal: give one object per line, or a CSV file") from None
    return records


def _flatten(value) -> str | None:
    """Strings stay; lists (Amazon's nested category paths) become 'a, b, c'; empty becomes None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, list | tuple):
        flat = []
        for v in value:
            flat += v if isinstance(v, list | tuple) else [v]
        value = ", ".join(dict.fromkeys(str(v) for v in flat if str(v)))
    value = str(value).strip()
    return value or None


def read_item_metadata(path: Path, key: str) -> pd.DataFrame:
    """Items frame (`item`, `title` and any of `brand`, `categories`, `text`) from a metadata file."""
    if path.suffix.lower() in (".json", ".jsonl", ".ndjson") or path.read_bytes()[:1] == b"{":
        frame = pd.DataFrame(_json_records(path))
    else:
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    if key not in frame.columns:
        raise DataError(f"dataset.items_path={path} has no id field {key!r} (found {list(frame.columns)[:8]}): "
                        f"set dataset.item_key= to the field holding the item ids")
    out = pd.DataFrame({"item": frame[key].astype(str).str.strip()})
    for dst, names in META_FIELDS.items():
        src = next((n for n in names if n in frame.columns and n != key), None)
        if src is not None:
            out[dst] = [_flatten(v) for v in frame[src]]
    if "title" not in out:
        raise DataError(f"dataset.items_path={path} has no title field (found {list(frame.columns)[:8]}): "
                        "items need a `title` (or `name`) to be shown to an LLM")
    out = out[out["title"].notna()]
    return out.drop_duplicates("item").reset_index(drop=True)


@register_dataset("user-sequence", schema=UserSequenceConfig,
                  description="P5/TIGER user_sequence.txt (one chronological item line per user)")
def load_user_sequence(cfg) -> RawData:
    path = Path(str(cfg.path)).expanduser() if cfg.path else None
    name = str(cfg.file)
    if path is not None and path.is_file():
        file = path
    else:
        file = locate(cfg, str(cfg.subdir), [name]) / name
    inter = read_user_sequences(file)
    read = [file]
    items = pd.DataFrame({"item": pd.Series(dtype=str), "title": pd.Series(dtype=str)})
    if cfg.items_path:
        meta_path = Path(str(cfg.items_path)).expanduser()
        if not meta_path.is_file():
            raise DataError(f"dataset.items_path={meta_path} does not exist: point it at a metadata file (JSON "
                            "lines or CSV keyed by item id) or set dataset.items_path=null")
        items = read_item_metadata(meta_path, str(cfg.item_key))
        read.append(meta_path)
    return RawData(inter, items, hash_files(read), has_time=False)
