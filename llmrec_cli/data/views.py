"""What a method may see while it fits: the training-only view of the prepared data.

`TrainView.of(data)` copies out the catalogue and each user's training interactions (for leave-one-out, the
sequence without its last two items; for the temporal split, the interactions before the valid cut) into
arrays of its own. It keeps no reference to the `PreparedData` it came from, so the held-out valid/test
targets are not reachable through it: not by a method that forgets, not by a helper it calls. Asking it for
anything that exists only with the targets (`sequence`, `history`, `target`, `targets`, ...) raises
`LeakageError` naming what was asked and what to use instead.

At scoring time the evaluator hands each `score` call the histories of its users for that split, so a
method never builds them from data that also holds the targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrec_cli.data.catalogue import Catalogue
from llmrec_cli.errors import LlmrecError


class LeakageError(LlmrecError):
    """A method asked for held-out data (a valid/test target) while fitting."""


#: PreparedData members that would expose held-out targets, and what a method should use instead.
HELD_OUT = {
    "sequence": "train_sequence(u) while fitting; score() receives the histories",
    "history": "the `histories` argument of score()/score_full()",
    "target": "nothing: targets belong to the evaluator",
    "targets": "nothing: targets belong to the evaluator",
    "target_ratings": "train_ratings(u)",
    "seq_items": "train_sequence(u)",
    "seq_ratings": "train_ratings(u)",
    "seq_times": "nothing: training times are not exposed",
    "offsets": "train_lengths()",
    "valid_pos": "nothing: split positions belong to the evaluator",
    "test_pos": "nothing: split positions belong to the evaluator",
    "positions": "nothing: split positions belong to the evaluator",
    "eval_users": "nothing: the evaluator picks the users",
}


@dataclass(frozen=True, eq=False)
class TrainView(Catalogue):
    """The catalogue and each user's training interactions (users 0..n_users-1, items 1..n_items)."""

    name: str
    key: str
    data_hash: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    items: pd.DataFrame
    _items: np.ndarray  # training items of all users, concatenated
    _ratings: np.ndarray
    _offsets: np.ndarray  # [n_users + 1] into _items

    @classmethod
    def of(cls, data) -> TrainView:
        """The training part of DATA (a `PreparedData`), copied."""
        train = data.train_mask()
        offsets = np.zeros(data.n_users + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(data.train_end)
        items = np.array(data.seq_items[train], dtype=np.int64)
        ratings = np.array(data.seq_ratings[train], dtype=np.float64)
        for arr in (items, ratings, offsets):
            arr.setflags(write=False)
        return cls(name=data.name, key=data.key, data_hash=data.data_hash, user_ids=data.user_ids,
                   item_ids=data.item_ids, items=data.items, _items=items, _ratings=ratings, _offsets=offsets)

    def __getattr__(self, name: str):
        if name in HELD_OUT:
            raise LeakageError(f"held-out data is not reachable while fitting: a method asked the training view "
                               f"for `{name}`; use {HELD_OUT[name]}")
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def has_ratings(self) -> bool:
        return bool(np.isfinite(self._ratings).any())

    def train_sequence(self, u: int) -> np.ndarray:
        """User U's training items, oldest first."""
        return self._items[self._offsets[u] : self._offsets[u + 1]]

    def train_ratings(self, u: int) -> np.ndarray:
        """Ratings of `train_sequence(u)` (NaN where the data has none)."""
        return self._ratings[self._offsets[u] : self._offsets[u + 1]]

    def train_lengths(self) -> np.ndarray:
        return np.diff(self._offsets)

    def train_counts(self) -> np.ndarray:
        """Training-interaction count per item index (length n_items + 1)."""
        return np.bincount(self._items, minlength=self.n_items + 1)

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) arrays of all training interactions."""
        return np.repeat(np.arange(self.n_users), self.train_lengths()), self._items.copy()
