"""Seeded synthetic data with item text, for tests and demos (no files, well under a second).

Items belong to topics and sit on a ring within their topic. Each user prefers one or two topics and mostly
walks forward along a topic's ring (next item = one or two steps on), with occasional topic switches and
random noise. Sequential models can learn these transitions; popularity is nearly flat, so it cannot.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrec_cli.data.raw import RawData
from llmrec_cli.data.sources.base import DatasetConfig
from llmrec_cli.errors import DataError
from llmrec_cli.registry import register_dataset

TOPICS = (("Robotics", "Widget"), ("Gardening", "Planter"), ("Cooking", "Skillet"), ("Jazz", "Record"),
          ("Hiking", "Backpack"), ("Astronomy", "Telescope"), ("Painting", "Easel"), ("Chess", "Board"))
ADJECTIVES = ("Quantum", "Rustic", "Golden", "Silent", "Rapid", "Cosmic", "Humble", "Vivid", "Crimson", "Nimble")
P_STAY, P_SWITCH = 0.85, 0.10  # otherwise (5%): a random item from any topic


@dataclass
class SyntheticConfig(DatasetConfig):
    """Schema for `synthetic`: sizes of the generated data and its own seed."""

    num_users: int = 200
    num_items: int = 120
    min_len: int = 8
    max_len: int = 30
    num_topics: int = 6
    data_seed: int = 0


def _topic_name(t: int) -> tuple[str, str]:
    return TOPICS[t] if t < len(TOPICS) else (f"Topic {t + 1}", "Gadget")


def _items(num_items: int, num_topics: int, rng: np.random.Generator) -> tuple[pd.DataFrame, list[list[int]]]:
    """Items 0..n-1 with topic i % num_topics; returns the frame and each topic's ring of items."""
    topic = np.arange(num_items) % num_topics
    rings = [list(np.flatnonzero(topic == t)) for t in range(num_topics)]
    rows = []
    for i in range(num_items):
        name, noun = _topic_name(int(topic[i]))
        title = f"{ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]} {noun} {i + 1}"
        rows.append((str(i + 1), title, int(rng.integers(1980, 2024)), name, f"Synthetic > {name}",
                     f"{name} Co", f"{title}. A {noun.lower()} for {name.lower()} fans."))
    cols = ["item", "title", "year", "genres", "categories", "brand", "text"]
    items = pd.DataFrame(rows, columns=cols).astype({"item": str, "title": str, "year": "Int64"})
    return items, rings


def _walk(length: int, prefs: list[int], rings: list[list[int]], n: int, rng: np.random.Generator) -> list[int]:
    """One user's item sequence without repeats: forward steps on preferred rings, some switches and noise."""
    topic = prefs[0]
    pos = {t: int(rng.integers(len(rings[t]))) for t in prefs}
    seen: list[int] = []
    while len(seen) < length:
        r = rng.random()
        if r >= P_STAY + P_SWITCH:
            unseen = [i for i in range(n) if i not in seen]
            seen.append(unseen[int(rng.integers(len(unseen)))])
            continue
        if r >= P_STAY and len(prefs) > 1:
            topic = prefs[1] if topic == prefs[0] else prefs[0]
        ring = rings[topic]
        step = 1 if rng.random() < 0.75 else 2
        for _ in range(len(ring)):  # next unseen item on the ring
            pos[topic] = (pos[topic] + step) % len(ring)
            step = 1
            if ring[pos[topic]] not in seen:
                seen.append(ring[pos[topic]])
                break
        else:  # ring exhausted: move to another topic
            others = [t for t in range(len(rings)) if any(i not in seen for i in rings[t])]
            topic = others[int(rng.integers(len(others)))]
            pos.setdefault(topic, int(rng.integers(len(rings[topic]))))
            prefs = [topic]
    return seen


@register_dataset("synthetic", schema=SyntheticConfig, description="seeded synthetic topics (tests, demos)")
def load_synthetic(cfg) -> RawData:
    """Generate the data from `dataset.data_seed`; identical config gives identical data."""
    n, k = int(cfg.num_items), int(cfg.num_topics)
    lo, hi = int(cfg.min_len), int(cfg.max_len)
    if not (1 <= k <= n and 1 <= lo <= hi <= n):
        raise DataError(f"dataset synthetic needs 1 <= num_topics <= num_items and 1 <= min_len <= max_len <= "
                        f"num_items (got num_topics={k}, num_items={n}, min_len={lo}, max_len={hi}): fix them")
    rng = np.random.default_rng(int(cfg.data_seed))
    items, rings = _items(n, k, rng)
    users, seq_items, stamps, ratings = [], [], [], []
    for u in range(int(cfg.num_users)):
        prefs = [int(t) for t in rng.choice(k, size=1 if k == 1 or rng.random() < 0.5 else 2, replace=False)]
        seq = _walk(int(rng.integers(lo, hi + 1)), prefs, rings, n, rng)
        t0 = 1_600_000_000 + int(rng.integers(0, 86_400 * 365))
        stamps += list(t0 + np.cumsum(rng.integers(60, 86_400, size=len(seq))))
        liked = np.isin(np.asarray(seq) % k, prefs)
        ratings += list(np.where(liked, rng.integers(4, 6, len(seq)), rng.integers(1, 6, len(seq))))
        users += [str(u + 1)] * len(seq)
        seq_items += [str(i + 1) for i in seq]
    inter = pd.DataFrame({"user": users, "item": seq_items, "timestamp": np.asarray(stamps, dtype="int64"),
                          "rating": np.asarray(ratings, dtype="float64")}).astype({"user": str, "item": str})
    return RawData(inter, items, {})
