"""Schemas of the methods (light: no torch), one dataclass per `conf/method/*.yaml`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    item_text: str = "full"  # full: 'Title (year), genres' | title: 'Title (year)' (shorter prompts)


@dataclass
class ZeroShotConfig(LLMMethodConfig):
    """Quadrant 3: a frozen LLM ranks the shared candidates, zero- or few-shot (LLMRank style)."""

    scoring: str = "listwise"  # pointwise (P(Yes)) | likelihood (title log-prob) | listwise (letter logits) | generate
    num_demos: int = 0  # few-shot demonstrations from other users' training data
    reasoning: str = "none"  # generate: none | cot (think step by step, then the ranking on the last line)
    max_new_tokens: int | None = None  # generate: answer budget (null: model.max_tokens, or 64 / 512 with cot)


@dataclass
class EmbeddingZeroShotConfig(LLMMethodConfig):
    """Quadrant 3: cosine similarity of history and candidate text embeddings from a frozen encoder/LM."""

    llm_kind: str = "any"
    history_weighting: str = "mean"  # mean | recency (newer items weigh more)


@dataclass
class TunedLLMConfig(LLMMethodConfig):
    """Shared knobs of quadrant-4 methods: LoRA adapters tuned on training data (needs a `model` with `peft`).

    The loop's settings (`trainer.lr`, `trainer.batch_size`, `trainer.grad_accum`, ...) are in `trainer.*`;
    `method.max_epochs` is the default of `trainer.max_epochs` (which wins when given).
    """

    needs_peft: bool = True
    num_samples: int | None = None  # seeded subset of the training prompts (e.g. 16, 64, 256); null: all
    max_epochs: int = 3
    samples_per_user: int = 1  # training targets per user: the last N positions of its sequence (0: all)
    train_negatives: str = "uniform"  # uniform (unseen items) | crm (the CRM's top items: hard negatives)
    aux_tasks: list[str] = field(default_factory=list)  # mim | bpr: auxiliary letter-choice samples
    aux_ratio: float = 0.5  # auxiliary samples per main sample (all aux tasks together)


@dataclass
class TallRecConfig(TunedLLMConfig):
    """Quadrant 4: LoRA instruction tuning on Yes/No questions from training data (TALLRec)."""

    negatives_per_user: int = 1  # unseen items per training user, answered "No"
    use_ratings: bool = False  # true: the positive is answered "Yes" only if rated >= eval.like_threshold


@dataclass
class ListwiseLoraConfig(TunedLLMConfig):
    """Quadrant 4: LoRA tuning of the listwise letter verbalizer (LlamaRec-style reranker)."""


@dataclass
class LLMEncoderConfig(LLMMethodConfig):
    """Quadrant 2: frozen LLM/encoder embeddings of item text feed the CRM (`crm=sasrec|bpr`), UniSRec style.

    `mode=init`: the CRM's item table starts from the projected text embeddings (then trains as usual);
    `mode=feature`: fixed text embeddings pass through a trainable adapter, optionally fused with ID embeddings.
    """

    llm_kind: str = "any"
    needs_crm: bool = True
    mode: str = "feature"  # init | feature
    fuse_id: bool = True  # feature mode: add trainable ID embeddings to the adapted text embeddings
    adapter: str = "linear"  # feature mode: linear | mlp (the trainable map from text space to CRM space)
    whiten: bool = False  # PCA-whiten the text vectors (default: centred, unit mean norm)
    batch_size: int = 64  # texts per forward pass when embedding


@dataclass
class LLMAugmentConfig(LLMMethodConfig):
    """Quadrant 2: the frozen LLM writes a short knowledge profile per item (and optionally per user, from
    training history only), cached and resumable; the profiles are encoded and fed to the CRM (KAR style)."""

    needs_crm: bool = True
    max_new_tokens: int = 48  # length of each generated profile
    user_profiles: bool = False  # also profile users from their training history (never valid/test items)
    mode: str = "feature"  # how the encoded profiles enter the CRM: init | feature (as in llm_encoder)
    fuse_id: bool = True
    adapter: str = "linear"
    whiten: bool = False  # as in llm_encoder
    batch_size: int = 16  # prompts per generate() call (per wave of requests with model=endpoint)
    log_samples: int = 20  # generations written to the run's `augment/samples.txt`
    # the model that embeds the profiles: a conf/model option (minilm, smollm2, ...); null: the generating model
    # itself, or minilm when that is model=endpoint (an API returns text, not hidden states), as KAR encodes
    # ChatGPT's knowledge with a separate encoder
    encoder: str | None = None
    encoder_model: Any = None  # filled in by composition: the resolved conf/model/<encoder>.yaml (read-only)


@dataclass
class CollmConfig(TunedLLMConfig):
    """Quadrant 1: CRM item (and user) embeddings -> trainable projector -> soft tokens in the LLM prompt next
    to each item's title (CoLLM / LLaRA / E4SRec); LoRA and the projector are trained, the CRM is frozen unless
    `crm.trainable=true`."""

    needs_crm: bool = True
    head: str = "pointwise"  # pointwise (Yes/No, like tallrec) | listwise (letters over the candidates)
    use_user_embedding: bool = True  # add the CRM's user representation as a soft token before the history
    projector_hidden: int = 256  # hidden width of the two-layer MLP projector (0: one linear layer)
    negatives_per_user: int = 1  # pointwise head: unseen items per training user, answered "No"
    use_ratings: bool = False  # pointwise head: the positive is answered "Yes" only if rated >= eval.like_threshold
    projector_lr: float = 1e-3  # learning rate of the projector (LoRA uses trainer.lr)
    item_repr: str = "title+id"  # title+id | id (one CRM soft token per item, E4SRec) | title (no item token)


SCHEMAS = {
    "baseline": BaselineConfig,
    "zero_shot": ZeroShotConfig,
    "embedding_zero_shot": EmbeddingZeroShotConfig,
    "tallrec": TallRecConfig,
    "listwise_lora": ListwiseLoraConfig,
    "llm_encoder": LLMEncoderConfig,
    "llm_augment": LLMAugmentConfig,
    "collm": CollmConfig,
}
