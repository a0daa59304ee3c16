"""Compose a run config from `conf/` plus Hydra-grammar overrides, and check it before anything runs.

`quadrant=` and `method=` are resolved together: a quadrant alone picks its default method, a method alone
sets its quadrant, and both must agree. Every failure becomes a one-line `ConfigError` (exit code 2).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from llmrec_cli.config import schema
from llmrec_cli.errors import ConfigError

GROUPS = ("dataset", "quadrant", "method", "crm", "candidates", "model", "eval", "trainer", "tracking", "experiment",
          "arm", "launcher")
CHOICES = {
    "trainer.device": ("auto", "cpu", "cuda"),
    "eval.negative_sampling": ("uniform", "popularity"),
    "candidates.source": ("sampled", "crm_topk"),
}
#: Method keys with a fixed set of values (checked when the method has the key).
METHOD_CHOICES = {"mode": ("init", "feature"), "head": ("pointwise", "listwise"), "adapter": ("linear", "mlp")}
_REGISTERED = False


def conf_dir() -> Path:
    """The `conf/` folder: $LLMREC_CONF_DIR, else the one beside the installed package (editable install)."""
    env = os.environ.get("LLMREC_CONF_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in {path}: set LLMREC_CONF_DIR to llmrec's conf/ folder")
    return path


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore as `<group>/schema_<name>` (YAMLs name them in defaults)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    import llmrec_cli.data.sources  # noqa: F401  (registers the dataset loaders; pandas only, no torch)
    from llmrec_cli import registry
    from llmrec_cli.crm.configs import SCHEMAS as CRM_SCHEMAS
    from llmrec_cli.methods.configs import SCHEMAS as METHOD_SCHEMAS
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=schema.RunConfig)
    for group, node in (("quadrant", schema.QuadrantConfig), ("model", schema.ModelConfig),
                        ("eval", schema.EvalConfig), ("trainer", schema.TrainerConfig),
                        ("tracking", schema.TrackingConfig),
                        ("candidates", schema.CandidatesConfig)):
        cs.store(group=group, name="schema", node=node)
    for name, entry in registry.DATASETS.items():
        cs.store(group="dataset", name=f"schema_{name}", node=entry.info["schema"])
    for name, node in CRM_SCHEMAS.items():
        cs.store(group="crm", name=f"schema_{name}", node=node)
    for name, node in METHOD_SCHEMAS.items():
        cs.store(group="method", name=f"schema_{name}", node=node)
    _REGISTERED = True


def _choice(overrides: list[str], group: str) -> str | None:
    for item in reversed(overrides):
        m = re.fullmatch(rf"\+?{group}=(.*)", item)
        if m:
            return m.group(1)
    return None


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines (and a cause); keep what names the key and the problem."""
    head = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
    cause = exc.__cause__
    detail = (str(cause).strip().splitlines() or [""])[0].strip() if cause else ""
    m = re.match(r"Could not override '(.+?)'", head)
    if m:
        return (f"{m.group(1)}: no such key ({detail or 'not in the config'}); see `llmrec config` for the keys, "
                f"or use +{m.group(1)}=... to add one")
    m = re.match(r"Error merging override (.+)", head)
    if m:
        return f"{m.group(1)}: {detail}" if detail else head
    m = re.match(r"(?:In '.+?': )?Could not find '(.+?)/(.+?)'", head)
    if m:
        return f"{m.group(1)}={m.group(2)} is not a known option; available: {', '.join(group_options(m.group(1)))}"
    return f"{head}: {detail}" if detail and detail not in head else head


def _quote_numeric_choice(item: str) -> str:
    """`quadrant=3` -> `quadrant='3'`: Hydra parses 3 as an int, but group choices are strings."""
    m = re.fullmatch(r"(\+?)(\w+)=(\d+)", item)
    if m and m.group(2) in GROUPS:
        return f"{m.group(1)}{m.group(2)}='{m.group(3)}'"
    return item


def _check_group_choices(overrides: list[str]) -> None:
    for item in overrides:
        m = re.fullmatch(r"\+?(\w+)=(.*)", item)
        if not m or m.group(1) not in GROUPS:
            continue
        group, value = m.groups()
        options = group_options(group)
        for choice in (c.strip("'\"") for c in value.split(",")):
            if choice not in options and not (group == "experiment" and choice == "null"):
                raise ConfigError(f"{group}={choice} is not a known option; available: {', '.join(options)}")


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose

    try:
        return compose(config_name="config", overrides=overrides)
    except Exception as exc:  # hydra/omegaconf raise many types; all are user errors here
        raise ConfigError(_one_line(exc)) from None


def compose_run(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose, resolve quadrant/method, resolve interpolations and validate. Raises ConfigError."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        raise ConfigError(f"unknown option {bad[0]!r}: overrides are key=value (Hydra grammar), options go first")
    overrides = [_quote_numeric_choice(o) for o in overrides]
    _check_group_choices(overrides)
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        # First pass without keys of the groups still to be resolved (`quadrant=3 method.scoring=likelihood`:
        # method.* exists only once the quadrant's default method is in).
        pending = [g for g in ("quadrant", "method") if _choice(overrides, g) is None]
        first = [o for o in overrides if not re.match(rf"[+~]?({'|'.join(pending)})\.", o)] if pending else overrides
        cfg = _compose(first)
        extra = []
        if OmegaConf.is_missing(cfg, "method") or cfg.get("method") is None:
            quadrant = "baseline" if OmegaConf.is_missing(cfg, "quadrant") else cfg.quadrant.id
            if OmegaConf.is_missing(cfg, "quadrant"):
                extra.append("quadrant=baseline")
            extra.append(f"method={_default_method(quadrant)}")
        elif OmegaConf.is_missing(cfg, "quadrant"):
            extra.append(f"quadrant={cfg.method.quadrant}")
        if extra or first is not overrides:
            cfg = _compose(overrides + [_quote_numeric_choice(o) for o in extra])
        _resolve_encoder(cfg)
    _protocol_candidates(cfg)
    validate(cfg)
    resolve_epochs(cfg)
    return cfg


def _resolve_encoder(cfg: DictConfig) -> None:
    """`method.encoder=<conf/model option>` (llm_augment: the model that embeds the generated profiles) becomes
    the resolved model node `method.encoder_model`, so the run's config records every field of it; with
    model=endpoint the default encoder is minilm (an API returns text, not hidden states)."""
    if "encoder" not in cfg.method:
        return
    name = cfg.method.encoder
    if name is None and cfg.model.get("kind") == "endpoint":
        name = cfg.method.encoder = "minilm"
    if name is None:
        return
    options = group_options("model")
    if name not in options:
        raise ConfigError(f"method.encoder={name} is not a model option; available: {', '.join(options)}")
    node = _compose([f"model={name}"]).model
    if node.get("kind") == "endpoint":
        raise ConfigError(f"method.encoder={name}: the profiles are embedded in-process, so the encoder needs "
                          "weights, not an endpoint; use e.g. method.encoder=minilm")
    cfg.method.encoder_model = node


def _protocol_candidates(cfg: DictConfig) -> None:
    """A protocol preset's `candidates=crm_topk` is for the LLM rerankers of its paper (quadrants 1/3/4); methods
    that rank the whole catalogue themselves (CRM baselines, quadrant 2) keep the plain candidates under it, so
    `protocol=llamarec quadrant=baseline` is the retriever alone."""
    if ("candidates.source" in cfg.protocol.changes and cfg.candidates.source == "crm_topk"
            and str(cfg.quadrant.id) not in ("1", "3", "4")):
        cfg.candidates.source = "sampled"


def resolve_epochs(cfg: DictConfig) -> None:
    """The one epoch rule: `trainer.max_epochs` when given, else the method's default (`method.max_epochs`, set
    in conf/method/*.yaml), else the CRM's (`crm.max_epochs`, conf/crm/*.yaml). `trainer.epochs_from` says which."""
    if cfg.trainer.max_epochs is not None:
        source = "trainer.max_epochs"
    elif cfg.method.get("max_epochs") is not None:
        cfg.trainer.max_epochs, source = cfg.method.max_epochs, f"method.max_epochs (method={cfg.method.name})"
    elif cfg.get("crm") is not None and cfg.crm.get("max_epochs") is not None:
        cfg.trainer.max_epochs, source = cfg.crm.max_epochs, f"crm.max_epochs (crm={cfg.crm.name})"
    else:
        cfg.trainer.max_epochs, source = 1, "default"
    if cfg.trainer.max_epochs < 1:
        raise ConfigError(f"{source.split()[0]}={cfg.trainer.max_epochs} must be >= 1")
    cfg.trainer.epochs_from = source


def _default_method(quadrant: str) -> str:
    path = conf_dir() / "quadrant" / f"{quadrant}.yaml"
    return str(OmegaConf.load(path).default_method)


def validate(cfg: DictConfig) -> None:
    """Checks that span groups (types and unknown keys are already checked by the schemas)."""
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:
        raise ConfigError(_one_line(exc)) from None
    if str(cfg.method.quadrant) != str(cfg.quadrant.id):
        raise ConfigError(
            f"method={cfg.method.name} belongs to quadrant {cfg.method.quadrant}, not quadrant={cfg.quadrant.id}: "
            f"drop quadrant= or pick a method of quadrant {cfg.quadrant.id} (see `llmrec ls`)"
        )
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value} is not one of {', '.join(allowed)}")
    ev = cfg.eval
    for proto in ev.protocols:
        if proto not in ("sampled", "full", "pointwise", "like"):
            raise ConfigError(f"eval.protocols has {proto!r}; allowed: sampled, full, pointwise, like")
    for split in ev.splits:
        if split not in ("valid", "test"):
            raise ConfigError(f"eval.splits has {split!r}; allowed: valid, test")
    if ev.num_negatives < 1 or ev.pointwise_negatives < 0 or any(k < 1 for k in ev.ks):
        raise ConfigError("eval.num_negatives and eval.ks must be >= 1 (eval.pointwise_negatives >= 0)")
    if ev.max_users is not None and ev.max_users < 1:
        raise ConfigError(f"eval.max_users={ev.max_users} must be >= 1 or null (all users)")
    if ev.permutations < 1:
        raise ConfigError(f"eval.permutations={ev.permutations} must be >= 1 (candidate orders per listwise prompt)")
    from llmrec_cli.data.splits import split_settings

    split_settings(cfg.dataset)
    if not re.fullmatch(r"valid/(sampled|full|pointwise|like)/\w+", ev.monitor):
        raise ConfigError(f"eval.monitor={ev.monitor} must be a valid-split metric, e.g. valid/full/ndcg_10")
    if cfg.dataset.kcore < 0 or cfg.dataset.min_user_interactions < 3:
        raise ConfigError("dataset.kcore must be >= 0 and dataset.min_user_interactions >= 3 (train/valid/test)")
    for key, allowed in METHOD_CHOICES.items():
        value = cfg.method.get(key)
        if value is not None and value not in allowed:
            raise ConfigError(f"method.{key}={value} is not one of {', '.join(allowed)}")
    # Listwise prompts label candidates with the letters A-Z: at most 26 per prompt.
    listwise = next((f"method.{k}=listwise" for k in ("scoring", "head") if cfg.method.get(k) == "listwise"),
                    "method=listwise_lora" if cfg.method.name == "listwise_lora" else None)
    if listwise and ev.num_negatives + 1 > 26:
        raise ConfigError(f"{listwise} labels at most 26 candidates (letters A-Z), but "
                          f"eval.num_negatives={ev.num_negatives}: use eval.num_negatives<=25 or another scoring")
    if cfg.candidates.source == "crm_topk":
        if str(cfg.quadrant.id) not in ("1", "3", "4"):
            raise ConfigError(f"candidates=crm_topk (the CRM's top k, reranked by the LLM) is for quadrants 1, 3 and "
                              f"4; method={cfg.method.name} is quadrant {cfg.quadrant.id}, which ranks the catalogue "
                              f"itself: drop candidates=")
        if cfg.candidates.k < 1:
            raise ConfigError(f"candidates.k={cfg.candidates.k} must be >= 1")
        if listwise and cfg.candidates.k > 26:
            raise ConfigError(f"candidates.k={cfg.candidates.k}: listwise prompts label at most 26 candidates "
                              f"(letters A-Z); use candidates.k<=26")
    if cfg.method.get("needs_crm", False) and cfg.crm.name == "pop" and cfg.method.name != "baseline":
        raise ConfigError(f"method={cfg.method.name} needs a CRM with embeddings: use crm=sasrec or crm=bpr")
    problem = model_problem(cfg.method, cfg.model)
    if problem:
        raise ConfigError(problem)
    if cfg.method.name == "baseline" and (cfg.crm is None or OmegaConf.is_missing(cfg, "crm")):
        raise ConfigError("quadrant=baseline needs crm=pop|bpr|sasrec")


#: Methods that can run on `model=endpoint`.
ENDPOINT_METHODS = ("zero_shot", "llm_augment")


def model_problem(method, model) -> str | None:
    """Why `model=` cannot serve `method=` (None when it can): LLM methods need a backbone of their kind,
    and tuned methods (`needs_peft`) a model with a `peft` block."""
    if not method.get("needs_llm", False):
        return None
    if model.name == "none":
        return f"method={method.name} needs an LLM: pick model= (see `llmrec ls`), e.g. model=tiny-llama"
    if model.get("kind") == "endpoint":
        if model.name in ("endpoint", "none"):
            return ("model=endpoint needs model.name=<the served model, as the server's /v1/models lists it>, "
                    "e.g. model.name=Qwen/Qwen2.5-7B-Instruct")
        if method.name not in ENDPOINT_METHODS:
            return (f"model=endpoint serves only method={' | '.join(ENDPOINT_METHODS)} (an API returns text and "
                    f"token log-probabilities, not weights to tune or hidden states), not method={method.name}")
        return None
    kind = method.get("llm_kind", "any")
    if kind != "any" and model.get("kind", "causal") != kind:
        return f"method={method.name} needs a {kind} model, but model={model.name} is {model.get('kind')}"
    if method.get("needs_peft", False) and model.get("peft") is None:
        return (f"method={method.name} tunes LoRA adapters, but model={model.name} has no `peft` block: "
                f"use a LoRA model such as model=tiny-llama-lora or model=smollm2-lora")
    return None


def group_options(group: str) -> list[str]:
    """YAML options of a config group (schema_* entries are not options)."""
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
