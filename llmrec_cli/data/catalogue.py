"""The shape every data object shares: users 0..n_users-1, items 1..n_items (0 is padding)."""
from __future__ import annotations


class Catalogue:
    """Counts from `user_ids` (one raw id per user index) and `item_ids` (item_ids[0] = "<pad>")."""

    user_ids: object
    item_ids: object

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1
