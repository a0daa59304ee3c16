"""Schemas of the methods (light: no torch), one dataclass per `conf/method/*.yaml`."""
from __future__ import annotations

from dataclasses import dataclass

from llmrec_cli.config.schema import MethodConfig


@dataclass
class BaselineConfig(MethodConfig):
    """A pure CRM run (`quadrant=baseline crm=pop|bpr|sasrec`): the method is the CRM named by `crm=`."""


@dataclass
class LLMMethodConfig(MethodConfig):
    """Shared knobs of methods that put an LLM (`model=`) in the loop."""

    needs_llm: bool = True
    llm_kind: str = "causal"  # causal | encoder | any: which `model.kind` the method can use
    batch_size: int = 8  # prompts per forward pass
    max_history: int = 20  # most recent items shown in a prompt
    history_tokens: int = 512  # token budget of the history block (oldest items dropped first)
    use_chat_template: bool = True  # wrap prompts in the tokenizer's chat template when it has one


@dataclass
class ZeroShotConfig(LLMMethodConfig):
    """Quadrant 3: a frozen LLM ranks the shared candidates, zero- or few-shot (LLMRank style)."""

    scoring: str = "listwise"  # pointwise (P(Yes)) | likelihood (title log-prob) | listwise (letter logits)
    num_demos: int = 0  # few-shot demonstrations from other users' training data


@dataclass
class EmbeddingZeroShotConfig(LLMMethodConfig):
    """Quadrant 3: cosine similarity of history and candidate text embeddings from a frozen encoder/LM."""

    llm_kind: str = "any"
    history_weighting: str = "mean"  # mean | recency (newer items weigh more)


SCHEMAS = {
    "baseline": BaselineConfig,
    "zero_shot": ZeroShotConfig,
    "embedding_zero_shot": EmbeddingZeroShotConfig,
}
