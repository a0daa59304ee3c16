"""The evaluation plan: which users are evaluated and on which candidates, built once per data and seed.

Every method is scored on the same plan (the evaluator owns targets and candidates, methods never see labels):
- `sampled`: the target plus N negatives the user never interacted with (uniform or by training popularity),
  shuffled per user so the target's position carries no signal.
- `full`: every item except the user's history (the target stays a candidate); built on the fly.
- `pointwise`: (user, item, label) samples for AUC / log-loss: the target, labelled 1 when its rating is at least
  `like_threshold` (or the data has no ratings), plus `pointwise_negatives` unseen items labelled 0, shuffled
  per user (a listwise scorer sees them as a short list, so position must not give the target away).
The plan is cached under $LLMREC_CACHE_DIR/plans/ and its hash is logged with every run.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np

from llmrec_cli.data.prepare import SPLITS, PreparedData
from llmrec_cli.errors import DataError
from llmrec_cli.utils.io import atomic_write, cache_dir, sha256_text

PLAN_VERSION = "2"
PLAN_KEYS = ("num_negatives", "negative_sampling", "pointwise_negatives", "like_threshold", "max_users")


@dataclass
class SplitPlan:
    users: np.ndarray  # [n] user indices
    targets: np.ndarray  # [n]
    sampled: np.ndarray  # [n, 1 + num_negatives] candidate items, shuffled
    sampled_target_pos: np.ndarray  # [n] column of the target in `sampled`
    pointwise_items: np.ndarray  # [n, 1 + pointwise_negatives]
    pointwise_labels: np.ndarray  # [n, 1 + pointwise_negatives] 0/1


@dataclass
class EvalPlan:
    hash: str
    splits: dict[str, SplitPlan]

    def __getitem__(self, split: str) -> SplitPlan:
        return self.splits[split]


def plan_settings(eval_cfg, seed: int) -> dict:
    return {"seed": int(seed), **{k: eval_cfg[k] for k in PLAN_KEYS}}


def build_plan(data: PreparedData, settings: dict) -> EvalPlan:
    rng = np.random.default_rng([settings["seed"], 20240917])
    users = np.arange(data.n_users)
    if settings["max_users"] is not None and settings["max_users"] < data.n_users:
        users = np.sort(rng.choice(users, size=settings["max_users"], replace=False))
    pop = data.train_counts().astype(np.float64)
    pop[0] = 0.0
    splits = {}
    for split in SPLITS:
        targets = data.targets(split)[users]
        n_neg, n_pw = int(settings["num_negatives"]), int(settings["pointwise_negatives"])
        negs = np.zeros((len(users), n_neg + n_pw), dtype=np.int64)
        for row, u in enumerate(users):
            negs[row] = _sample_unseen(rng, data, int(u), n_neg + n_pw, settings["negative_sampling"], pop)
        sampled = np.concatenate([targets[:, None], negs[:, :n_neg]], axis=1)
        perm = np.argsort(rng.random(sampled.shape), axis=1)
        sampled = np.take_along_axis(sampled, perm, axis=1)
        target_pos = np.argmax(perm == 0, axis=1)
        ratings = data.target_ratings(split)[users]
        thr = settings["like_threshold"]
        like = np.isnan(ratings) | (ratings >= thr) if thr is not None else np.ones(len(users), dtype=bool)
        pw_items = np.concatenate([targets[:, None], negs[:, n_neg:]], axis=1)
        pw_labels = np.zeros_like(pw_items)
        pw_labels[:, 0] = like.astype(np.int64)
        pw_perm = np.argsort(rng.random(pw_items.shape), axis=1)  # the target's position carries no signal
        pw_items = np.take_along_axis(pw_items, pw_perm, axis=1)
        pw_labels = np.take_along_axis(pw_labels, pw_perm, axis=1)
        splits[split] = SplitPlan(users, targets, sampled, target_pos, pw_items, pw_labels)
    return EvalPlan(hash=_hash(splits), splits=splits)


def _sample_unseen(rng, data: PreparedData, u: int, n: int, how: str, pop: np.ndarray) -> np.ndarray:
    """N distinct items the user never interacted with (in any split)."""
    seen = np.unique(data.sequence(u))
    available = data.n_items - len(seen)
    if available < n:
        raise DataError(f"user {data.user_ids[u]} of dataset={data.name} has only {available} unseen items; "
                        f"lower eval.num_negatives / eval.pointwise_negatives")
    if how == "uniform":
        out: list[int] = []
        seen_set = set(seen.tolist())
        while len(out) < n:  # rejection sampling: cheap while histories are small relative to the catalogue
            for c in rng.integers(1, data.n_items + 1, size=2 * (n - len(out)) + 8).tolist():
                if c not in seen_set:
                    seen_set.add(c)
                    out.append(c)
                    if len(out) == n:
                        break
        return np.asarray(out, dtype=np.int64)
    weights = pop.copy()
    weights[seen] = 0.0
    if (weights > 0).sum() < n:  # not enough popular unseen items: fall back to uniform over unseen
        weights = np.ones_like(weights)
        weights[0] = 0.0
        weights[seen] = 0.0
    return rng.choice(len(weights), size=n, replace=False, p=weights / weights.sum()).astype(np.int64)


def _hash(splits: dict[str, SplitPlan]) -> str:
    h = hashlib.sha256(PLAN_VERSION.encode())
    for split in SPLITS:
        p = splits[split]
        for arr in (p.users, p.targets, p.sampled, p.pointwise_items, p.pointwise_labels):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def get_plan(data: PreparedData, eval_cfg, seed: int) -> EvalPlan:
    """Load the plan for (data, settings) from the cache, or build and cache it (atomically)."""
    settings = plan_settings(eval_cfg, seed)
    # data_hash covers sequences and ids only; the pointwise labels also depend on the ratings
    r = np.asarray(data.seq_ratings, dtype=np.float64)
    ratings = hashlib.sha256(np.where(np.isnan(r), np.nan, r).tobytes()).hexdigest()[:16]  # one NaN bit pattern
    key = sha256_text(json.dumps([PLAN_VERSION, data.data_hash, ratings, settings], sort_keys=True))[:16]
    path = cache_dir() / "plans" / f"{data.data_hash}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            splits = {s: SplitPlan(*(z[f"{s}_{f}"] for f in SplitPlan.__dataclass_fields__)) for s in SPLITS}
            return EvalPlan(hash=str(z["hash"]), splits=splits)
    plan = build_plan(data, settings)
    buf = io.BytesIO()
    arrays = {f"{s}_{f}": getattr(plan[s], f) for s in SPLITS for f in SplitPlan.__dataclass_fields__}
    np.savez_compressed(buf, hash=np.asarray(plan.hash), **arrays)
    atomic_write(path, buf.getvalue())
    return plan
