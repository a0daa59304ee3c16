"""Quadrant 3, `embedding_zero_shot`: cosine similarity between a user's history and each candidate's text.

Item texts are embedded once by the frozen backbone (an encoder such as MiniLM, or a mean-pooled causal LM)
and cached on disk, keyed by model, pooling and a hash of the texts. A user is the (recency-weighted) mean of
the embeddings of their last `max_history` history items. Cheap enough for the full-ranking protocol too.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np

from llmrec_cli.llm.prompts import item_texts
from llmrec_cli.methods.configs import EmbeddingZeroShotConfig
from llmrec_cli.methods.llm_base import LLMMethod
from llmrec_cli.registry import register_method
from llmrec_cli.utils.io import atomic_write, cache_dir


@register_method("embedding_zero_shot", quadrant="3", schema=EmbeddingZeroShotConfig)
class EmbeddingZeroShot(LLMMethod):
    score_kind = "score"

    def fit(self, data):
        self.data = data
        self.setup_llm()
        texts = item_texts(data.items)
        self.item_emb = self._item_embeddings(texts)
        self.ctx.log_text("\n".join(texts[1:6]), "prompts/example_item_texts.txt")
        return {}

    def _item_embeddings(self, texts: list[str]) -> np.ndarray:
        model = self.ctx.cfg.model
        key = hashlib.sha256("\x1f".join([model.name, str(model.name_or_path), model.pooling, *texts]).encode()).hexdigest()[:16]
        path = cache_dir() / "embeddings" / f"{model.name}-{key}.npy"
        if path.is_file():
            return np.load(path)
        emb = self.timed(lambda: self.scorer.embed(texts[1:], pooling=model.pooling), 0)
        emb = np.concatenate([np.zeros((1, emb.shape[1])), emb]).astype(np.float32)  # row 0: padding
        buf = io.BytesIO()
        np.save(buf, emb)
        atomic_write(path, buf.getvalue())
        return emb

    def _users(self, split: str, users: np.ndarray) -> np.ndarray:
        out = np.zeros((len(users), self.item_emb.shape[1]), dtype=np.float64)
        for r, u in enumerate(users):
            hist = self.data.history(int(u), split)[-int(self.cfg.max_history):]
            w = np.arange(1, len(hist) + 1, dtype=np.float64) if self.cfg.history_weighting == "recency" \
                else np.ones(len(hist))
            v = (self.item_emb[hist] * w[:, None]).sum(0)
            out[r] = v / max(np.linalg.norm(v), 1e-12)
        return out

    def score(self, split, users, items):
        return self.timed(lambda: np.einsum("nd,ncd->nc", self._users(split, users), self.item_emb[items]), len(users))

    def score_full(self, split, users):
        return self.timed(lambda: self._users(split, users) @ self.item_emb.T.astype(np.float64), len(users))
