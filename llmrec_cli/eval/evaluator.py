"""Score a fitted method on the shared evaluation plan and compute every metric of every protocol.

Metric names: `{split}/{protocol}/{metric}_{k}` (e.g. `test/sampled/ndcg_10`, `test/full/hr_10`) and
`{split}/pointwise/auc`, `{split}/pointwise/logloss`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrec_cli.data.candidates import EvalPlan
from llmrec_cli.data.prepare import PreparedData
from llmrec_cli.eval import metrics as M
from llmrec_cli.utils.progress import progress_bar


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_user: pd.DataFrame  # user_id, split, protocol, rank, hr_k, ndcg_k, mrr_k
    predictions: pd.DataFrame | None  # user_id, split, protocol, item_id, score, is_target


class Evaluator:
    def __init__(self, data: PreparedData, plan: EvalPlan, eval_cfg):
        self.data, self.plan, self.cfg = data, plan, eval_cfg
        self.ks = tuple(int(k) for k in eval_cfg.ks)

    def evaluate(self, method, splits=None, protocols=None, keep_predictions: bool = False,
                 progress: bool = False) -> EvalResult:
        splits = list(splits or self.cfg.splits)
        protocols = [p for p in (protocols or self.cfg.protocols) if p != "full" or method.supports_full]
        metrics: dict[str, float] = {}
        per_user, preds = [], []
        for split in splits:
            for proto in protocols:
                fn = {"sampled": self._sampled, "full": self._full, "pointwise": self._pointwise}[proto]
                m, pu, pr = fn(method, split, keep_predictions, progress)
                metrics.update({f"{split}/{proto}/{k}": v for k, v in m.items()})
                if pu is not None:
                    per_user.append(pu)
                if pr is not None:
                    preds.append(pr)
        return EvalResult(metrics, pd.concat(per_user, ignore_index=True) if per_user else pd.DataFrame(),
                          pd.concat(preds, ignore_index=True) if preds else None)

    # ---- protocols -----------------------------------------------------------------------------------
    def _batches(self, n: int, desc: str, progress: bool):
        bs = int(self.cfg.batch_size)
        return progress_bar(range(0, n, bs), desc=desc, enabled=progress, total=(n + bs - 1) // bs)

    def _sampled(self, method, split, keep, progress):
        p = self.plan[split]
        ranks = np.zeros(len(p.users), dtype=np.int64)
        rows = []
        for s in self._batches(len(p.users), f"eval {split}/sampled", progress):
            e = min(s + int(self.cfg.batch_size), len(p.users))
            scores = np.asarray(method.score(split, p.users[s:e], p.sampled[s:e]), dtype=np.float64)
            _check_shape(scores, p.sampled[s:e].shape, method)
            ranks[s:e] = M.target_ranks(scores, p.sampled_target_pos[s:e])
            if keep:
                is_t = np.zeros_like(scores, dtype=bool)
                is_t[np.arange(e - s), p.sampled_target_pos[s:e]] = True
                rows.append(self._pred_frame(p.users[s:e], p.sampled[s:e], scores, is_t, split, "sampled"))
        return self._summary(ranks, p.users, split, "sampled", rows)

    def _full(self, method, split, keep, progress):
        p = self.plan[split]
        n_cols = self.data.n_items + 1
        ranks = np.zeros(len(p.users), dtype=np.int64)
        rows = []
        topk = int(self.cfg.save_full_topk)
        for s in self._batches(len(p.users), f"eval {split}/full", progress):
            e = min(s + int(self.cfg.batch_size), len(p.users))
            users = p.users[s:e]
            scores = np.asarray(method.score_full(split, users), dtype=np.float64)
            _check_shape(scores, (len(users), n_cols), method)
            valid = np.ones_like(scores, dtype=bool)
            valid[:, 0] = False
            for r, u in enumerate(users):
                valid[r, self.data.history(int(u), split)] = False
            targets = p.targets[s:e]
            valid[np.arange(len(users)), targets] = True  # the target stays a candidate even if seen before
            ranks[s:e] = M.target_ranks(scores, targets, valid)
            if keep:
                # candidates first (NaN / -inf scores lifted just above the excluded columns), then the rest
                masked = np.where(valid, np.maximum(M._clean(scores), np.finfo(np.float64).min), -np.inf)
                k = min(topk, n_cols - 1)
                top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
                with_t = np.concatenate([top, targets[:, None]], axis=1)
                dup = (top == targets[:, None]).any(axis=1)  # target already in the top K: drop the extra copy
                keep_col = np.ones_like(with_t, dtype=bool)
                keep_col[dup, -1] = False
                # rows with fewer than K candidates: never write history items or the padding column
                keep_col[:, :-1] &= np.take_along_axis(valid, top, axis=1)
                rr = np.repeat(np.arange(len(users))[:, None], with_t.shape[1], axis=1)[keep_col]
                items = with_t[keep_col]
                rows.append(self._pred_frame(users[rr][:, None], items[:, None], scores[rr, items][:, None],
                                             (items == targets[rr])[:, None], split, "full"))
        return self._summary(ranks, p.users, split, "full", rows)

    def _pointwise(self, method, split, keep, progress):
        p = self.plan[split]
        scores = np.zeros(p.pointwise_items.shape, dtype=np.float64)
        for s in self._batches(len(p.users), f"eval {split}/pointwise", progress):
            e = min(s + int(self.cfg.batch_size), len(p.users))
            out = np.asarray(method.score(split, p.users[s:e], p.pointwise_items[s:e]), dtype=np.float64)
            _check_shape(out, p.pointwise_items[s:e].shape, method)
            scores[s:e] = out
        labels = p.pointwise_labels
        m = {"auc": M.auc(labels, scores), "n_samples": float(labels.size), "positive_rate": float(labels.mean())}
        if method.score_kind == "probability":
            m["logloss"] = M.log_loss(labels, scores)
        elif method.score_kind == "logit":
            m["logloss"] = M.log_loss(labels, M.sigmoid(scores))
        rows = [self._pred_frame(p.users, p.pointwise_items, scores, labels.astype(bool), split, "pointwise")] \
            if keep else []
        return m, None, pd.concat(rows, ignore_index=True) if rows else None

    # ---- helpers -------------------------------------------------------------------------------------
    def _summary(self, ranks, users, split, proto, rows):
        per = M.rank_metrics(ranks, self.ks)
        m = {k: float(v.mean()) for k, v in per.items()}
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
