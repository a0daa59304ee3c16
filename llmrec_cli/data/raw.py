"""The contract between dataset loaders and preparation.

A loader turns files in their original layout into a `RawData`: an interactions frame in original file order
and an items frame with text for LLMs. Everything after that (filtering, k-core, split) is shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

INTERACTION_COLUMNS = ("user", "item", "timestamp", "rating")


@dataclass
class RawData:
    """Raw interactions and item text as read from disk.

    interactions: columns `user` (str), `item` (str), `timestamp` (int64; for data without time, the position in
        the user's sequence), `rating` (float64, NaN where the data has none). Rows stay in original file order:
        preparation breaks timestamp ties by this order.
    items: column `item` (str) plus `title` (str) and any of `year` (Int64), `genres`, `categories`, `brand`,
        `text` (str). Items without metadata may be absent; they get their id as title.
    files: {path: sha256} of every file read, logged as the dataset hash.
    has_time: whether `timestamp` is a real time comparable across users (False: a position per user, which
        orders a user's interactions but cannot drive a global temporal split).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    files: dict[str, str] = field(default_factory=dict)
    has_time: bool = True

    def __post_init__(self) -> None:
        missing = [c for c in INTERACTION_COLUMNS if c not in self.interactions.columns]
        if missing:
            raise ValueError(f"RawData.interactions lacks columns {missing}")
        if "item" not in self.items.columns or "title" not in self.items.columns:
            raise ValueError("RawData.items needs columns 'item' and 'title'")
