"""Quadrant 3, `embedding_zero_shot`: cosine similarity between a user's history and each candidate's text.

Item texts are embedded once by the frozen backbone (an encoder such as MiniLM, or a mean-pooled causal LM)
and cached on disk, keyed by model, pooling and a hash of the texts. A user is the (recency-weighted) mean of
the embeddings of their last `max_history` history items. Cheap enough for the full-ranking protocol too.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from llmrec_cli.llm.prompts import item_texts
from llmrec_cli.methods.configs import EmbeddingZeroShotConfig
from llmrec_cli.methods.llm_base import LLMMethod
from llmrec_cli.registry import register_method
from llmrec_cli.utils.io import atomic_write, cache_dir


@register_method("embedding_zero_shot", quadrant="3", schema=EmbeddingZeroShotConfig)
class EmbeddingZeroShot(LLMMethod):
    score_kind = "score"

    def setup(self, data) -> None:
        self.data = data
        self.setup_llm()
        texts = item_texts(data.items, str(self.cfg.item_text))
        self.item_emb = self._item_embeddings(texts)
        self.ctx.log_text("\n".join(texts[1:6]), "prompts/example_item_texts.txt")

    def _item_embeddings(self, texts: list[str]) -> np.ndarray:
        pooling = self.ctx.cfg.model.pooling
        return cached_text_embeddings(self.ctx.cfg.model, texts,
                                      lambda todo: self.timed(lambda: self.scorer.embed(todo, pooling=pooling), 0))[0]

    def _users(self, histories) -> np.ndarray:
        out = np.zeros((len(histories), self.item_emb.shape[1]), dtype=np.float64)
        for r, history in enumerate(histories):
            hist = np.asarray(history, dtype=np.int64)[-int(self.cfg.max_history):]
            w = np.arange(1, len(hist) + 1, dtype=np.float64) if self.cfg.history_weighting == "recency" \
                else np.ones(len(hist))
            v = (self.item_emb[hist] * w[:, None]).sum(0)
            out[r] = v / max(np.linalg.norm(v), 1e-12)
        return out

    def score(self, users, histories, items):
        return self.timed(lambda: np.einsum("nd,ncd->nc", self._users(histories), self.item_emb[items]), len(users))

    def score_full(self, users, histories):
        if self.prefilter is not None:  # candidates=crm_topk: rerank the CRM's top k
            return super().score_full(users, histories)
        return self.timed(lambda: self._users(histories) @ self.item_emb.T.astype(np.float64), len(users))


def embedding_cache_path(model_cfg, texts: Sequence[str]) -> Path:
    """`cache_dir()/embeddings/<model>-<key>.npy`, key: model name, name_or_path, pooling and the texts."""
    parts = [model_cfg.name, str(model_cfg.name_or_path), model_cfg.pooling, *texts]
    key = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
    return cache_dir() / "embeddings" / f"{model_cfg.name}-{key}.npy"


def cached_text_embeddings(model_cfg, texts: Sequence[str],
                           embed: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, bool]:
    """(float32 [len(texts), d] embeddings, cache hit) of TEXTS, whose row 0 is padding (zeros).

    `embed(texts[1:])` runs only on a cache miss (shared by `embedding_zero_shot`, `llm_encoder` and
    `llm_augment`); the result is written atomically, so a killed run leaves no partial file.
    """
    path = embedding_cache_path(model_cfg, texts)
    if path.is_file():
        return np.load(path), True
    emb = np.asarray(embed(list(texts[1:])))
    emb = np.concatenate([np.zeros((1, emb.shape[1])), emb]).astype(np.float32)  # row 0: padding
    buf = io.BytesIO()
    np.save(buf, emb)
    atomic_write(path, buf.getvalue())
    return emb, False
