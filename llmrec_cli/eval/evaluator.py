"""Score a fitted method on the shared evaluation plan and compute every metric of every protocol.

The evaluator owns the targets, the candidates and the histories: for each batch of users it hands the
method `score(users, histories, items)` (or `score_full(users, histories)`), where `histories[i]` is user i's
history for the split being scored (everything before that split's target). Methods never see a label.

Metric names `{split}/{protocol}/{metric}`:
- `sampled`, `full`: `hr_K`, `ndcg_K`, `mrr_K` per user, averaged; `n_users`. Ties rank the target below.
- `pointwise`: the target (label 1) against `eval.pointwise_negatives` unseen items (label 0): `gauc` (each
  user's AUC, averaged over users), `auc` (pooled over all samples), `n_samples`, `positive_rate`.
- `like` (datasets with ratings; not for listwise scorers, which need two candidates to score one): the
  target alone, labelled `rating >= eval.like_threshold`: `auc` pooled over users, as TALLRec computes it.
- `logloss` (pointwise, like) only for methods whose scores are probabilities (`score_kind` "probability",
  or "logit": log-odds whose sigmoid is one, the Yes/No heads); CRM dot products are not, so they get none.
Order-sensitive methods (listwise prompts) see every candidate list in `eval.permutations` seeded orders
(`llmrec_cli.eval.orders`) and are ranked on the mean score; with more than one order the spread is logged as
`{split}/sampled/permutation_rank_std` (the target's rank, std over orders, averaged over users) and
`permutation_ndcg_10_std`. A protocol that cannot run for a method is skipped with a note in `notes`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from llmrec_cli.data.candidates import EvalPlan
from llmrec_cli.data.prepare import PreparedData
from llmrec_cli.eval import metrics as M
from llmrec_cli.eval.orders import score_in_orders
from llmrec_cli.utils.progress import progress_bar

PROTOCOLS = ("sampled", "full", "pointwise", "like")
PROBABILITY_KINDS = ("probability", "logit")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_user: pd.DataFrame  # user_id, split, protocol, rank, hr_k, ndcg_k, mrr_k (pointwise: gauc)
    predictions: pd.DataFrame | None  # user_id, split, protocol, item_id, score, is_target
    notes: list[str] = field(default_factory=list)  # protocols skipped and why


class Evaluator:
    def __init__(self, data: PreparedData, plan: EvalPlan, eval_cfg, seed: int = 0):
        self.data, self.plan, self.cfg = data, plan, eval_cfg
        self.seed = int(seed)
        self.ks = tuple(int(k) for k in eval_cfg.ks)
        self.permutations = max(1, int(eval_cfg.get("permutations", 1) or 1))

    def evaluate(self, method, splits=None, protocols=None, keep_predictions: bool = False,
                 progress: bool = False) -> EvalResult:
        splits = list(splits or self.cfg.splits)
        metrics: dict[str, float] = {}
        per_user, preds, notes = [], [], []
        for proto in protocols or self.cfg.protocols:
            if proto not in PROTOCOLS:
                raise ValueError(f"eval.protocols: {proto!r} is not one of {', '.join(PROTOCOLS)}")
            reason = self.skip_reason(method, proto)
            if reason:
                notes.append(f"{proto}: skipped: {reason}")
                continue
            for split in splits:
                fn = {"sampled": self._sampled, "full": self._full, "pointwise": self._pointwise,
                      "like": self._like}[proto]
                m, pu, pr = fn(method, split, keep_predictions, progress)
                metrics.update({f"{split}/{proto}/{k}": v for k, v in m.items()})
                if pu is not None:
                    per_user.append(pu)
                if pr is not None:
                    preds.append(pr)
        return EvalResult(metrics, pd.concat(per_user, ignore_index=True) if per_user else pd.DataFrame(),
                          pd.concat(preds, ignore_index=True) if preds else None, notes)

    def skip_reason(self, method, proto: str) -> str:
        """Why PROTO cannot run for METHOD on this data ('' when it can)."""
        if proto == "full" and not method.supports_full:
            return (f"{type(method).__name__} does not rank the whole catalogue "
                    f"(candidates=crm_topk makes it a two-stage system that does)")
        if proto == "like":
            if not self.data.has_ratings:
                return f"dataset={self.data.name} has no ratings, so 'liked' is undefined"
            if getattr(method, "order_sensitive", False):
                return f"{type(method).__name__} scores candidates against each other; a single item has no score"
            if not any((self.plan[s].like_labels >= 0).any() for s in self.plan.splits):
                return "no evaluated target has a rating, or eval.like_threshold is null"
        return ""

    # ---- scoring ---------------------------------------------------------------------------------------
    def histories(self, split: str, users: np.ndarray) -> list[np.ndarray]:
        """Each user's history for SPLIT: the only user data a method gets at scoring time."""
        return [self.data.history(int(u), split) for u in users]

    def _score(self, method, split, users, items) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores [n, c], scores per presentation order [K, n, c] or None) of the candidate ITEMS."""
        hist = self.histories(split, users)
        if getattr(method, "order_sensitive", False):
            mean, per_order = score_in_orders(method.score, users, hist, items, self.seed, self.permutations)
            return mean, per_order
        scores = np.asarray(method.score(users, hist, items), dtype=np.float64)
        _check_shape(scores, items.shape, method)
        return scores, None

    def _batches(self, n: int, desc: str, progress: bool):
        bs = int(self.cfg.batch_size)
        for s in progress_bar(range(0, n, bs), desc=desc, enabled=progress, total=(n + bs - 1) // bs):
            yield s, min(s + bs, n)

    # ---- protocols -------------------------------------------------------------------------------------
    def _sampled(self, method, split, keep, progress):
        p = self.plan[split]
        ranks = np.zeros(len(p.users), dtype=np.int64)
        order_ranks = np.zeros((self.permutations, len(p.users)), dtype=np.int64)
        rows = []
        for s, e in self._batches(len(p.users), f"eval {split}/sampled", progress):
            scores, per_order = self._score(method, split, p.users[s:e], p.sampled[s:e])
            ranks[s:e] = M.target_ranks(scores, p.sampled_target_pos[s:e])
            if per_order is not None:
                for j, sc in enumerate(per_order):
                    order_ranks[j, s:e] = M.target_ranks(sc, p.sampled_target_pos[s:e])
            if keep:
                is_t = np.zeros_like(scores, dtype=bool)
                is_t[np.arange(e - s), p.sampled_target_pos[s:e]] = True
                rows.append(self._pred_frame(p.users[s:e], p.sampled[s:e], scores, is_t, split, "sampled"))
        m, frame, pred = self._summary(ranks, p.users, split, "sampled", rows)
        if getattr(method, "order_sensitive", False) and self.permutations > 1:
            k = 10 if 10 in self.ks else self.ks[0]
            per_order_ndcg = [M.rank_metrics(r, (k,))[f"ndcg_{k}"].mean() for r in order_ranks]
            m["permutations"] = float(self.permutations)
            m["permutation_rank_std"] = float(order_ranks.std(axis=0).mean())
            m[f"permutation_ndcg_{k}_std"] = float(np.std(per_order_ndcg))
        return m, frame, pred

    def _full(self, method, split, keep, progress):
        p = self.plan[split]
        n_cols = self.data.n_items + 1
        ranks = np.zeros(len(p.users), dtype=np.int64)
        rows = []
        topk = int(self.cfg.save_full_topk)
        for s, e in self._batches(len(p.users), f"eval {split}/full", progress):
            users = p.users[s:e]
            hist = self.histories(split, users)
            scores = np.asarray(method.score_full(users, hist), dtype=np.float64)
            _check_shape(scores, (len(users), n_cols), method)
            valid = np.ones_like(scores, dtype=bool)
            valid[:, 0] = False
            for r, h in enumerate(hist):
                valid[r, h] = False
            targets = p.targets[s:e]
            valid[np.arange(len(users)), targets] = True  # the target stays a candidate even if seen before
            ranks[s:e] = M.target_ranks(scores, targets, valid)
            if keep:
                rows.append(self._full_predictions(users, scores, valid, targets, topk, split))
        return self._summary(ranks, p.users, split, "full", rows)

    def _full_predictions(self, users, scores, valid, targets, topk, split) -> pd.DataFrame:
        """The top K candidates per user (NaN / -inf scores lifted just above the excluded columns), and the
        target; never a history item or the padding column."""
        n_cols = scores.shape[1]
        masked = np.where(valid, np.maximum(M._clean(scores), np.finfo(np.float64).min), -np.inf)
        k = min(topk, n_cols - 1)
        top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
        with_t = np.concatenate([top, targets[:, None]], axis=1)
        dup = (top == targets[:, None]).any(axis=1)  # target already in the top K: drop the extra copy
        keep_col = np.ones_like(with_t, dtype=bool)
        keep_col[dup, -1] = False
        keep_col[:, :-1] &= np.take_along_axis(valid, top, axis=1)  # rows with fewer than K candidates
        rr = np.repeat(np.arange(len(users))[:, None], with_t.shape[1], axis=1)[keep_col]
        items = with_t[keep_col]
        return self._pred_frame(users[rr][:, None], items[:, None], scores[rr, items][:, None],
                                (items == targets[rr])[:, None], split, "full")

    def _pointwise(self, method, split, keep, progress):
        p = self.plan[split]
        scores = np.zeros(p.pointwise_items.shape, dtype=np.float64)
        for s, e in self._batches(len(p.users), f"eval {split}/pointwise", progress):
            scores[s:e] = self._score(method, split, p.users[s:e], p.pointwise_items[s:e])[0]
        labels = p.pointwise_labels
        per_user = M.row_auc(labels, scores)
        m = {"gauc": float(np.nanmean(per_user)) if len(per_user) else float("nan"),
             "auc": M.auc(labels, scores), "n_users": float(len(p.users)), "n_samples": float(labels.size),
             "positive_rate": float(labels.mean()) if labels.size else float("nan")}
        m.update(self._logloss(method, labels, scores))
        frame = pd.DataFrame({"user_id": self.data.user_ids[p.users].astype(str), "split": split,
                              "protocol": "pointwise", "gauc": per_user})
        rows = [self._pred_frame(p.users, p.pointwise_items, scores, labels.astype(bool), split, "pointwise")] \
            if keep else []
        return m, frame, pd.concat(rows, ignore_index=True) if rows else None

    def _like(self, method, split, keep, progress):
        p = self.plan[split]
        rated = np.flatnonzero(p.like_labels >= 0)
        users, items, labels = p.users[rated], p.targets[rated][:, None], p.like_labels[rated][:, None]
        scores = np.zeros(items.shape, dtype=np.float64)
        for s, e in self._batches(len(users), f"eval {split}/like", progress):
            scores[s:e] = self._score(method, split, users[s:e], items[s:e])[0]
        m = {"auc": M.auc(labels, scores), "n_samples": float(labels.size), "n_users": float(len(np.unique(users))),
             "positive_rate": float(labels.mean()) if labels.size else float("nan")}
        m.update(self._logloss(method, labels, scores))
        rows = [self._pred_frame(users, items, scores, labels.astype(bool), split, "like")] if keep else []
        return m, None, pd.concat(rows, ignore_index=True) if rows else None

    # ---- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _logloss(method, labels, scores) -> dict[str, float]:
        kind = getattr(method, "score_kind", "score")
        if kind == "probability":
            return {"logloss": M.log_loss(labels, scores)}
        if kind == "logit":
            return {"logloss": M.log_loss(labels, M.sigmoid(scores))}
        return {}

    def _summary(self, ranks, users, split, proto, rows):
        per = M.rank_metrics(ranks, self.ks)
        m = {k: float(v.mean()) if len(v) else float("nan") for k, v in per.items()}
        m["n_users"] = float(len(users))
        frame = pd.DataFrame({"user_id": self.data.user_ids[users].astype(str), "split": split, "protocol": proto,
                              "rank": ranks, **per})
        return m, frame, pd.concat(rows, ignore_index=True) if rows else None

    def _pred_frame(self, users, items, scores, is_target, split, proto) -> pd.DataFrame:
        n, c = items.shape
        return pd.DataFrame({
            "user_id": np.repeat(self.data.user_ids[users].astype(str), c),
            "split": split, "protocol": proto,
            "item_id": self.data.item_ids[items.ravel()].astype(str),
            "score": scores.ravel().astype(np.float64), "is_target": is_target.ravel(),
        })


def _check_shape(scores: np.ndarray, shape, method) -> None:
    if scores.shape != tuple(shape):
        raise RuntimeError(f"{type(method).__name__}.score returned shape {scores.shape}, expected {tuple(shape)}")
