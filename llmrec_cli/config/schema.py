"""Structured-config schemas for the config groups that are not owned by a plugin module.

Dataset, CRM and method schemas live next to their code (registered with `schema=`); this module holds the
top-level run schema and the shared groups (quadrant, model, eval, trainer, tracking). Every YAML in a group
pulls its schema through its defaults list, so an unknown key or a wrong type fails at compose time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

QUADRANTS = ("baseline", "1", "2", "3", "4")


@dataclass
class QuadrantConfig:
    """Where the LLM enters (survey taxonomy). `default_method` is used when no `method=` is given."""

    id: str = MISSING
    llm: str = MISSING  # none | frozen | tuned
    crm_at_inference: bool = MISSING
    default_method: str = MISSING
    description: str = ""


@dataclass
class MethodConfig:
    """Base schema of a method; each method subclasses it with its own knobs."""

    name: str = MISSING
    quadrant: str = MISSING
    max_epochs: int | None = None  # this method's default for trainer.max_epochs (null: the CRM's, crm.max_epochs)


@dataclass
class CRMConfig:
    """Base schema of a conventional recommender; each CRM subclasses it."""

    name: str = MISSING
    max_epochs: int = 200  # this CRM's default for trainer.max_epochs (early stopping usually ends sooner)
    from_run: str | None = None  # reuse the CRM of a finished MLflow run instead of training it
    trainable: bool = False  # when used as a component: tune it jointly (quadrant 1)


@dataclass
class CandidatesConfig:
    """Which candidates quadrant-3/4 LLM rankers rerank for the full-ranking protocol.

    `sampled`: only the shared sampled/pointwise candidates are scored (no full ranking).
    `crm_topk`: filter-then-rerank. The run's CRM (`crm=`, trained in-line or `crm.from_run=`) retrieves its
    top `k` unseen items per user over the whole catalogue; the LLM reorders them and the rest keep the CRM's
    order, so `*/full/*` metrics are those of the two-stage system (a target outside the top k keeps its CRM
    rank). The CRM is only a pre-filter: the run stays in quadrant 3 or 4.
    """

    source: str = "sampled"  # sampled | crm_topk
    k: int = 20  # crm_topk: items the LLM reranks per user


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on a frozen backbone; `target_modules` are explicit per architecture.

    PEFT's own defaults for Llama/Qwen2 are only `q_proj, v_proj`, so each `conf/model/*-lora.yaml` lists the
    projections it adapts (Llama and Qwen2 share the names q/k/v/o_proj, gate/up/down_proj).
    """

    r: int = 8  # rank of the update matrices
    alpha: int = 16  # scaling: the update is multiplied by alpha / r
    dropout: float = 0.05  # dropout on the adapter input (active in train mode only)
    target_modules: list[str] = field(default_factory=list)  # module names to adapt, e.g. [q_proj, v_proj]
    bias: str = "none"  # none | all | lora_only
    top_layers: int | None = None  # adapt only the top N transformer layers (backward stops below them); null: all


@dataclass
class ModelConfig:
    """An LLM backbone (or `none` for pure CRM runs), loaded by `llmrec_cli.llm.loading.load_backbone`.

    Resolution order: `tiny` (an in-code random Llama, no files), `package_dir` (a folder inside an installed
    python package), `gguf_package`/`gguf_file` (dequantized once into $LLMREC_CACHE_DIR/models), then
    `name_or_path` (a hub id or a local folder; also the fallback when a package is not installed).
    """

    name: str = "none"
    name_or_path: str | None = None  # hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) or a local folder
    package_dir: str | None = None  # <package>/<sub/dir> inside an installed python package, used first
    gguf_package: str | None = None  # an installed python package that ships a GGUF file
    gguf_file: str | None = None  # the GGUF file name inside gguf_package, or a path to a .gguf file
    kind: str = "causal"  # causal (a decoder LM with its head) | encoder (hidden states, for embeddings)
    weights: str = "pretrained"  # pretrained | random (the architecture with random init: speed benchmarks)
    tiny: bool = False  # the 2-layer random Llama of llmrec_cli/llm/tiny.py (tests, demos)
    dtype: str = "auto"  # auto (bfloat16 on CUDA; on a CPU bf16 where measured faster, see llm/precision.py) | float32 | bfloat16 | float16
    max_length: int = 1024  # prompt token budget
    pooling: str = "mean"  # mean | cls: how token states become one embedding (kind=encoder)
    gradient_checkpointing: bool = False  # trade compute for memory when tuning (non-reentrant)
    peft: LoraConfig | None = None  # LoRA adapters; null: none (the backbone is used frozen)
    # kind=endpoint (conf/model/endpoint.yaml): `name` is the served model, reached at `base_url`
    base_url: str | None = None  # an OpenAI-compatible API, e.g. http://localhost:8000/v1
    api_key_env: str | None = None  # the NAME of the environment variable holding the key (never the key)
    timeout: float = 60.0  # seconds per request
    max_concurrency: int = 4  # requests in flight
    max_retries: int = 5  # on 429 / 5xx / timeouts, with exponential backoff
    backoff_seconds: float = 1.0  # first retry wait; doubles each retry
    temperature: float = 0.0  # greedy by default (reproducible, cacheable)
    seed: int = 0  # sent with every request
    max_tokens: int = 256  # answer budget for method.scoring=generate
    price_per_1m_input: float | None = None  # optional money cost, per million prompt tokens
    price_per_1m_output: float | None = None  # per million completion tokens


@dataclass
class EvalConfig:
    """The one evaluation protocol shared by every method (see README, "Evaluation protocol")."""

    protocols: list[str] = field(default_factory=lambda: ["sampled", "full", "pointwise", "like"])
    splits: list[str] = field(default_factory=lambda: ["valid", "test"])
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    num_negatives: int = 19  # sampled protocol: target + N negatives not in the user's history
    negative_sampling: str = "uniform"  # uniform | popularity
    pointwise_negatives: int = 1  # pointwise protocol: the target (label 1) + N unseen items (label 0)
    like_threshold: float | None = 4.0  # like protocol: the target is liked when its rating >= this
    max_users: int | None = None  # seeded subset of evaluation users, the same for every method
    permutations: int = 1  # listwise scorers: candidate orders scored and averaged per user (position bias)
    save_full_topk: int = 100  # predictions.parquet keeps the top K per user (+ the target) for `full`
    batch_size: int = 512
    monitor: str = "valid/full/ndcg_10"  # early-stopping / model-selection metric (valid split only)


@dataclass
class TrainerConfig:
    """The training loop shared by trainable methods."""

    max_epochs: int | None = None  # null: the method's default (method.max_epochs, else crm.max_epochs)
    epochs_from: str | None = None  # set by compose: which key max_epochs came from (printed, logged)
    patience: int = 10  # epochs without improvement of `eval.monitor` before stopping
    eval_every: int = 1
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default
    progress: bool = True
    # LLM tuning (llmrec_cli/llm/training.py); CRMs keep their own `crm.lr` / `crm.batch_size`
    lr: float = 2e-4  # AdamW peak learning rate of the LoRA adapters
    batch_size: int = 8  # training examples per forward pass
    grad_accum: int = 1  # forward passes per optimizer step (effective batch = batch_size * grad_accum)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03  # linear warm-up over this share of the steps, then linear decay to 0
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)


@dataclass
class TrackingConfig:
    """MLflow. `uri` null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""

    uri: str | None = None
    experiment: str = "llmrec"
    log_predictions: bool = True


@dataclass
class ProtocolConfig:
    """A paper's evaluation protocol as a preset (`conf/protocol/*.yaml`, `@package _global_`).

    `unified` (the default) is llmrec's own protocol and changes nothing. A preset overrides only the keys its
    paper did differently and lists them in `changes`; `differences` says how llmrec still differs from the
    paper's own code (tested: composing a preset changes exactly the keys in `changes`).
    """

    name: str = "unified"
    paper: str = ""  # the paper whose protocol this is
    source: str = ""  # the repository file(s) it follows, with commit
    changes: list[str] = field(default_factory=list)  # config keys the preset sets (dotted)
    differences: list[str] = field(default_factory=list)  # what still differs from the paper's setup


@dataclass
class RunConfig:
    """Top-level keys. Group nodes are typed by their own schemas (`Any` here)."""

    dataset: Any = MISSING
    quadrant: Any = MISSING
    method: Any = MISSING
    crm: Any = MISSING
    candidates: Any = MISSING
    model: Any = MISSING
    eval: Any = MISSING
    trainer: Any = MISSING
    tracking: Any = MISSING
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    seed: int = 0
    run_name: str | None = None
    output_dir: str = "outputs"  # local run folders (checkpoints); artifacts also go to MLflow
    resume: bool = False  # LLM tuning: continue from the last epoch checkpoint of the same config
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow tags, e.g. +tags.note=ablation
