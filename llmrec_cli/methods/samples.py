"""Training samples of the tuned LLM methods, from the training view only.

- targets (`method.samples_per_user`): a target is a position `t >= 1` of a user's training sequence; its
  history is the sequence before it (the prompt shows its last `method.max_history` items) and its answer the
  item at `t`. `samples_per_user=1` keeps each user's last training item (TALLRec's and LlamaRec's sample),
  `N` the last N positions, `0` every position (sliding windows over the training prefix).
- budget (`method.num_samples`): a seeded subset of targets, enough for that many prompts, then exactly that
  many prompts (TALLRec's few-shot sizes 16/64/256 count prompts).
- negatives (`method.train_negatives`): `uniform` draws items outside the user's training sequence (as BPR
  does); `crm` takes the CRM's top items for the target's history, outside the user's training sequence (hard
  negatives, as LlamaRec trains on its retriever's candidates), so training candidates look like the
  `candidates=crm_topk` ones the reranker is tested on. Neither excludes a held-out valid/test item: that would
  make training depend on test labels.
- auxiliary tasks (`method.aux_tasks`, mixed at `method.aux_ratio` of the main samples, split evenly; seed 002,
  "Aligning Large Language Models with Recommendation Knowledge"), both letter-choice prompts whatever the
  method's head (the softmax restricted to the letters, as listwise training):
  - `mim`, masked-item modelling in natural language: a training window with one item hidden (`[hidden]`),
    the answer the hidden item among it and `eval.num_negatives` negatives;
  - `bpr`, pairwise preference: the target's history and two candidates, its next item and a negative,
    "which will the user choose next?".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llmrec_cli.errors import ConfigError

NEGATIVE_SOURCES = ("uniform", "crm")
AUX_TASKS = ("mim", "bpr")


@dataclass(frozen=True)
class Target:
    user: int
    pos: int  # index into the user's training sequence: history = seq[:pos], answer = seq[pos]


@dataclass
class Sample:
    task: str  # next (the method's own task) | mim | bpr
    user: int
    history: np.ndarray  # items the prompt shows (mim: 0 marks the hidden one)
    items: np.ndarray  # the candidates (letter prompts) or the one item asked about (pointwise)
    answer: int  # letter prompts: the answer's index in `items`; pointwise: 1 (Yes) / 0 (No)


def check_sample_config(cfg) -> None:
    """ConfigError for sample settings no builder can use."""
    if int(cfg.get("samples_per_user", 1)) < 0:
        raise ConfigError(f"method.samples_per_user={cfg.samples_per_user} must be >= 0 (0: every position)")
    source = str(cfg.get("train_negatives", "uniform"))
    if source not in NEGATIVE_SOURCES:
        raise ConfigError(f"method.train_negatives={source} is not one of {', '.join(NEGATIVE_SOURCES)}")
    bad = [t for t in (cfg.get("aux_tasks") or []) if t not in AUX_TASKS]
    if bad:
        raise ConfigError(f"method.aux_tasks: {', '.join(map(str, bad))} not among {', '.join(AUX_TASKS)}")
    if float(cfg.get("aux_ratio", 0.0)) < 0:
        raise ConfigError(f"method.aux_ratio={cfg.aux_ratio} must be >= 0")


def training_targets(data, per_user: int) -> list[Target]:
    """Every user's last PER_USER training positions (0: all positions >= 1)."""
    out = []
    for u in range(data.n_users):
        n = len(data.train_sequence(u))
        if n < 2:
            continue
        first = 1 if per_user <= 0 else max(1, n - per_user)
        out += [Target(u, t) for t in range(first, n)]
    return out


def budget_targets(targets: list[Target], num_prompts: int | None, per_target: int,
                   rng: np.random.Generator) -> list[Target]:
    """A seeded subset of TARGETS giving at least NUM_PROMPTS prompts (PER_TARGET each), in their order."""
    if num_prompts is None:
        return targets
    need = math.ceil(int(num_prompts) / max(per_target, 1))
    if need >= len(targets):
        return targets
    keep = np.sort(rng.choice(len(targets), size=need, replace=False))
    return [targets[i] for i in keep]


def trim(samples: list[Sample], num_prompts: int | None, rng: np.random.Generator) -> list[Sample]:
    """Exactly NUM_PROMPTS of SAMPLES (a seeded subset, order kept), or all."""
    if num_prompts is None or int(num_prompts) >= len(samples):
        return samples
    keep = np.sort(rng.choice(len(samples), size=int(num_prompts), replace=False))
    return [samples[i] for i in keep]


def sample_unseen(rng: np.random.Generator, n_items: int, seen: set[int], k: int) -> list[int]:
    """K distinct items in 1..N_ITEMS outside SEEN (rejection sampling; fewer when not enough are left)."""
    k = min(k, n_items - len(seen))
    out: list[int] = []
    taken = set(seen)
    while len(out) < k:
        for c in rng.integers(1, n_items + 1, size=2 * (k - len(out)) + 8).tolist():
            if c not in taken:
                taken.add(c)
                out.append(c)
                if len(out) == k:
                    break
    return out


class UniformNegatives:
    """Items outside the user's training sequence, uniformly."""

    name = "uniform"

    def __init__(self, data, rng: np.random.Generator):
        self.data, self.rng = data, rng

    def __call__(self, targets: list[Target], k: int) -> list[list[int]]:
        return [sample_unseen(self.rng, self.data.n_items, set(self.data.train_sequence(t.user).tolist()), k)
                for t in targets]


class CrmNegatives:
    """The CRM's top items for each target's history, outside the user's training sequence (hard negatives)."""

    name = "crm"

    def __init__(self, data, crm, batch_size: int = 256):
        self.data, self.crm, self.batch_size = data, crm, batch_size

    def __call__(self, targets: list[Target], k: int) -> list[list[int]]:
        import torch

        out: list[list[int]] = []
        for s in range(0, len(targets), self.batch_size):
            chunk = targets[s:s + self.batch_size]
            users = np.asarray([t.user for t in chunk], dtype=np.int64)
            seqs = [self.data.train_sequence(t.user) for t in chunk]
            with torch.no_grad():
                scores = self.crm.score(users, [q[:t.pos] for q, t in zip(seqs, chunk, strict=True)], None).float()
            scores[:, 0] = -torch.inf
            for r, q in enumerate(seqs):
                scores[r, torch.as_tensor(np.array(q), dtype=torch.long, device=scores.device)] = -torch.inf
            width = min(k, scores.shape[1] - 1 - max(len(q) for q in seqs))
            out += scores.topk(max(width, 0), dim=1).indices.cpu().numpy().tolist()
        return out


def negative_source(name: str, data, rng: np.random.Generator, crm=None):
    if name == "crm":
        if crm is None:
            raise ConfigError("method.train_negatives=crm needs a CRM: use it with method=collm (quadrant 1) or "
                              "candidates=crm_topk (the pre-filter's top items), else train_negatives=uniform")
        return CrmNegatives(data, crm)
    return UniformNegatives(data, rng)


def aux_samples(data, targets: list[Target], tasks, ratio: float, n_main: int, num_candidates: int,
                rng: np.random.Generator, max_history: int) -> list[Sample]:
    """`mim` / `bpr` samples (see the module docstring), `round(RATIO * N_MAIN)` in all, from TARGETS."""
    tasks = list(tasks or [])
    total = round(float(ratio) * n_main) if tasks else 0
    if total <= 0 or not targets:
        return []
    uniform = UniformNegatives(data, rng)
    out: list[Sample] = []
    for k, task in enumerate(tasks):
        n = total // len(tasks) + (k < total % len(tasks))
        picked = [targets[i] for i in rng.choice(len(targets), size=n, replace=n > len(targets))]
        if task == "mim":
            negs = uniform(picked, num_candidates - 1)
            for t, neg in zip(picked, negs, strict=True):
                window = data.train_sequence(t.user)[: t.pos + 1][-max(max_history, 1):].copy()
                hide = int(rng.integers(len(window)))
                cands = np.asarray([int(window[hide]), *neg], dtype=np.int64)
                window[hide] = 0
                order = rng.permutation(len(cands))
                out.append(Sample("mim", t.user, window, cands[order], int(np.flatnonzero(order == 0)[0])))
        else:
            negs = uniform(picked, 1)
            for t, neg in zip(picked, negs, strict=True):
                seq = data.train_sequence(t.user)
                cands = np.asarray([int(seq[t.pos]), *neg], dtype=np.int64)
                order = rng.permutation(len(cands))
                out.append(Sample("bpr", t.user, seq[: t.pos], cands[order], int(np.flatnonzero(order == 0)[0])))
    return out
