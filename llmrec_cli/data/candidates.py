"""The evaluation plan: which users are evaluated and on which candidates, built once per data and seed.

Every method is scored on the same plan (the evaluator owns targets and candidates, methods never see labels):
- `sampled`: the target plus N negatives the user never interacted with (uniform or by training popularity),
  shuffled per user so the target's position carries no signal.
- `full`: every item except the user's history (the target stays a candidate); built on the fly.
- `pointwise`: "will the user interact with this item?": the held-out target (label 1, whatever its rating)
  and `pointwise_negatives` unseen items (label 0), shuffled per user.
- `like` (datasets with ratings): "will the user like the item they consumed?" (TALLRec's question): the
  target alone, labelled `rating >= like_threshold`; users whose target has no rating are left out.

Candidates are a function of (seed, dataset, user, split) and nothing else: each user's negatives and
shuffles come from their own generator, `np.random.default_rng([seed, user, split code, stream])`, and the
`max_users` subset from a generator of the seed alone. So the plan of any user subset is exactly the rows of
the full plan for those users, and subset numbers are a subset of the full run's per-user numbers.
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

PLAN_VERSION = "3"
PLAN_KEYS = ("num_negatives", "negative_sampling", "pointwise_negatives", "like_threshold", "max_users")
SPLIT_CODES = {"valid": 1, "test": 2}
#: Independent random streams per (seed, user, split): one for each protocol's negatives and shuffle.
SAMPLED_STREAM, POINTWISE_STREAM = 0, 1
SUBSET_STREAM = 20240917


@dataclass
class SplitPlan:
    users: np.ndarray  # [n] user indices
    targets: np.ndarray  # [n]
    sampled: np.ndarray  # [n, 1 + num_negatives] candidate items, shuffled
    sampled_target_pos: np.ndarray  # [n] column of the target in `sampled`
    pointwise_items: np.ndarray  # [n, 1 + pointwise_negatives]
    pointwise_labels: np.ndarray  # [n, 1 + pointwise_negatives] 0/1: 1 for the target
    like_labels: np.ndarray  # [n] 1 when the target's rating >= like_threshold, 0 below, -1 without rating


@dataclass
class EvalPlan:
    hash: str
    splits: dict[str, SplitPlan]
    settings: dict | None = None

    def __getitem__(self, split: str) -> SplitPlan:
        return self.splits[split]


def plan_settings(eval_cfg, seed: int) -> dict:
    return {"seed": int(seed), **{k: eval_cfg[k] for k in PLAN_KEYS}}


def plan_users(data: PreparedData, split: str, settings: dict) -> np.ndarray:
    """Users evaluated on SPLIT: every eligible user, or the seeded `max_users` subset of them.

    The subset takes the eligible users in the order of one seeded permutation of all users, so it depends
    on the seed and the data only (not on the negatives, the split's other settings or other splits)."""
    eligible = data.eval_users(split)
    m = settings.get("max_users")
    if m is None or int(m) >= len(eligible):
        return eligible
    order = np.random.default_rng([int(settings["seed"]), SUBSET_STREAM]).permutation(data.n_users)
    chosen = order[np.isin(order, eligible)][: int(m)]
    return np.sort(chosen)


def user_rng(seed: int, user: int, split: str, stream: int) -> np.random.Generator:
    """The generator of one user's candidates for one split and protocol (see the module docstring)."""
    return np.random.default_rng([int(seed), int(user), SPLIT_CODES[split], int(stream)])


def build_plan(data: PreparedData, settings: dict) -> EvalPlan:
    seed = int(settings["seed"])
    n_neg, n_pw = int(settings["num_negatives"]), int(settings["pointwise_negatives"])
    how = settings["negative_sampling"]
    if how not in ("uniform", "popularity"):
        from llmrec_cli.errors import ConfigError

        raise ConfigError(f"eval.negative_sampling={how} is not one of uniform, popularity")
    pop = data.train_counts().astype(np.float64)
    pop[0] = 0.0
    thr = settings["like_threshold"]
    splits = {}
    for split in SPLITS:
        users = plan_users(data, split, settings)
        targets = data.targets(split)[users]
        n = len(users)
        sampled = np.zeros((n, 1 + n_neg), dtype=np.int64)
        target_pos = np.zeros(n, dtype=np.int64)
        pw_items = np.zeros((n, 1 + n_pw), dtype=np.int64)
        pw_labels = np.zeros((n, 1 + n_pw), dtype=np.int64)
        for row, u in enumerate(users.tolist()):
            rng = user_rng(seed, u, split, SAMPLED_STREAM)
            cands = np.concatenate([[targets[row]], _sample_unseen(rng, data, u, n_neg, how, pop)])
            perm = rng.permutation(len(cands))
            sampled[row] = cands[perm]
            target_pos[row] = int(np.flatnonzero(perm == 0)[0])
            rng = user_rng(seed, u, split, POINTWISE_STREAM)
            cands = np.concatenate([[targets[row]], _sample_unseen(rng, data, u, n_pw, how, pop)])
            perm = rng.permutation(len(cands))  # the target's position carries no signal
            pw_items[row] = cands[perm]
            pw_labels[row] = (perm == 0).astype(np.int64)
        ratings = data.target_ratings(split)[users]
        like = np.full(n, -1, dtype=np.int64)
        if thr is not None:
            rated = np.isfinite(ratings)
            like[rated] = (ratings[rated] >= float(thr)).astype(np.int64)
        splits[split] = SplitPlan(users, targets, sampled, target_pos, pw_items, pw_labels, like)
    return EvalPlan(hash=_hash(splits), splits=splits, settings=dict(settings))


def _sample_unseen(rng, data: PreparedData, u: int, n: int, how: str, pop: np.ndarray) -> np.ndarray:
    """N distinct items the user never interacted with (in any split, before or after the target)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
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
        for arr in (p.users, p.targets, p.sampled, p.pointwise_items, p.pointwise_labels, p.like_labels):
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
            return EvalPlan(hash=str(z["hash"]), splits=splits, settings=settings)
    plan = build_plan(data, settings)
    buf = io.BytesIO()
    arrays = {f"{s}_{f}": getattr(plan[s], f) for s in SPLITS for f in SplitPlan.__dataclass_fields__}
    np.savez_compressed(buf, hash=np.asarray(plan.hash), **arrays)
    atomic_write(path, buf.getvalue())
    return plan


def protocol_hash(data: PreparedData, settings: dict) -> str:
    """Hash of everything that makes two runs' numbers comparable except the seed: the prepared data (k-core,
    rating filter, split) and every plan setting. Seeds of one protocol may be averaged; other protocols never."""
    rest = {k: v for k, v in settings.items() if k != "seed"}
    return sha256_text(json.dumps([PLAN_VERSION, data.data_hash, rest], sort_keys=True))[:16]


def protocol_label(data: PreparedData, dataset_cfg, plan: EvalPlan) -> str:
    """A short readable protocol name, e.g. `ml-100k/5core/loo · 20c/943u` (`r>=4` with a rating filter,
    `pop` for popularity-sampled negatives)."""
    settings = plan.settings or {}
    parts = [data.name]
    if int(dataset_cfg.get("kcore") or 0) > 1:
        parts.append(f"{int(dataset_cfg.kcore)}core")
    if dataset_cfg.get("min_rating") is not None:
        parts.append(f"r>={float(dataset_cfg.min_rating):g}")
    split = data.split if data.split == "loo" else \
        "temporal" + "-".join(f"{float(q):g}" for q in dataset_cfg.get("split_time") or ())
    parts.append(split)
    cands = f"{int(settings.get('num_negatives', 0)) + 1}c"
    if settings.get("negative_sampling") == "popularity":
        cands += "-pop"
    return "/".join(parts) + f" · {cands}/{len(plan['test'].users)}u"
