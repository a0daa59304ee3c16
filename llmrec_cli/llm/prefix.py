"""Shared-prefix plumbing of the scoring engine: which prompts share a token prefix, and the prompt KV cache
with its rows picked per candidate (Cache objects of transformers 4.3x-5.x and legacy tuples)."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch


class Prefix(NamedTuple):
    """Encoded prefixes: KV cache, attention mask [P, L] and lengths [P] (on device), last hidden [P, H]."""
    cache: object
    mask: torch.Tensor
    lengths: torch.Tensor
    last_hidden: torch.Tensor


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def shared_prefix_groups(encoded: Sequence[Sequence[int]], min_shared: int,
                          max_rows: int) -> list[tuple[list[int], int]]:
    """Group prompts (sorted by token ids) that share at least ``min_shared`` leading tokens, at most
    ``max_rows`` per group: [(indices, prefix_len)], prefix_len leaving every suffix at least one token.
    Groups of one (prefix_len 0) are prompts to encode whole.

    A prompt joins the current group only if the tokens saved, (size - 1) * prefix_len, do not drop: prompts
    that share just a common header (a chat template's system turn) do not cut a group's long shared history
    down to that header."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    groups: list[tuple[list[int], int]] = []
    cur: list[int] = []
    common = shortest = 0
    for i in order:
        if cur and min_shared > 0 and len(cur) < max_rows:
            new_common = min(common, common_prefix(encoded[cur[0]], encoded[i]))
            new_shortest = min(shortest, len(encoded[i]))
            shared, before = min(new_common, new_shortest - 1), min(common, shortest - 1)
            if shared >= min_shared and len(cur) * shared >= (len(cur) - 1) * before:
                cur.append(i)
                common, shortest = new_common, new_shortest
                continue
        if cur:
            groups.append((cur, min(common, shortest - 1) if len(cur) > 1 else 0))
        cur, common, shortest = [i], len(encoded[i]), len(encoded[i])
    if cur:
        groups.append((cur, min(common, shortest - 1) if len(cur) > 1 else 0))
    return groups


def select_cache(cache, index: torch.Tensor, copy_first: bool):
    """The prompt KV cache with its batch rows picked by ``index`` (repeats allowed), for the candidates.

    Works with ``Cache`` objects (``batch_select_indices``, present since transformers 4.3x, in v5 on each
    layer) and with legacy tuples of (key, value) tensors. ``copy_first`` keeps the original intact
    (for the next chunk); indexing itself already allocates new tensors, so only the container is copied.
    """
    if isinstance(cache, (tuple, list)):
        return tuple(tuple(t[index] for t in layer) for layer in cache)
    if copy_first:
        cache = _shallow_copy(cache)
    cache.batch_select_indices(index)
    return cache


def _shallow_copy(cache):
    """Copy a Cache's containers but share its tensors: ``DynamicLayer``-style layers re-assign their
    tensors (``torch.cat``, indexing) instead of writing into them. Other layer types are deep-copied."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer).__name__ not in _REASSIGNING_LAYERS for layer in layers):
        return copy.deepcopy(cache)
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in layers]
    return new


_REASSIGNING_LAYERS = {"DynamicLayer", "DynamicSlidingWindowLayer"}
