"""Load an LLM backbone (model + tokenizer) from a `model` config, and wrap it with LoRA adapters.

`load_backbone` resolves the weights in this order, the first that applies wins:

1. `tiny: true`: the in-code random Llama of `llmrec_cli.llm.tiny` (no files, for tests).
2. `package_dir: <package>/<sub/dir>`: a model folder shipped inside an installed python package.
3. `gguf_package` / `gguf_file`: a GGUF file, dequantized once and saved with `save_pretrained` to
   `$LLMREC_CACHE_DIR/models/<file stem>-<key>` (key: the file's name, size and mtime), then loaded from there.
4. `name_or_path`: a hub id or a local folder (`local_files_only` when HF_HUB_OFFLINE=1). It is also the
   fallback when the package of 2. or 3. is not installed.

`weights: random` keeps the architecture (config) of the resolved source but initialises it randomly, for
speed benchmarks. The backbone comes back frozen (`requires_grad_(False)`, eval mode) on the requested device;
`apply_lora` adds trainable adapters. torch, transformers and peft are imported inside the functions.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrec_cli.errors import ConfigError, LlmrecError
from llmrec_cli.utils.io import cache_dir

log = logging.getLogger(__name__)

KINDS = ("causal", "encoder")
WEIGHTS = ("pretrained", "random")
DTYPES = ("auto", "float32", "bfloat16", "float16")
POOLINGS = ("mean", "cls")
_TRUE = ("1", "true", "yes", "on")


@dataclass
class LoadedModel:
    """A backbone ready to use: the (possibly peft-wrapped) model, its tokenizer and what was loaded."""

    model: Any
    tokenizer: Any
    kind: str  # causal | encoder
    name: str  # the config's `name`, e.g. smollm2
    source: str  # where the weights came from, e.g. "gguf:/.../x.gguf (cache /.../models/x-1a2b)"
    num_parameters: int
    num_trainable: int
    dtype: str  # e.g. float32, bfloat16
    device: str = "cpu"
    dtype_reason: str = ""  # why this dtype (model.dtype=auto on a CPU: the bf16 probe's verdict)


def load_backbone(model_cfg: Any, device: str = "cpu") -> LoadedModel:
    """Load the backbone of MODEL_CFG (a `ModelConfig` or its DictConfig) onto DEVICE, frozen and in eval mode.

    Raises `LlmrecError` (one line, naming the key and the fix) when the weights cannot be found.
    """
    import torch

    _check_choices(model_cfg)
    device = resolve_device(device)
    dtype = resolve_dtype(str(model_cfg.dtype), device)
    kind = str(model_cfg.kind)
    random_init = str(model_cfg.weights) == "random"
    if model_cfg.tiny:
        model, tokenizer, source = _load_tiny(kind)
    else:
        src, source = _resolve_source(model_cfg)
        tokenizer = _load_tokenizer(src, model_cfg)
        model = _load_model(src, model_cfg, kind, dtype, random_init)
        if random_init:
            source = f"random init, architecture of {source}"
    dtype_reason = "model.dtype=" + str(model_cfg.dtype)
    if str(model_cfg.dtype) == "auto" and not str(device).startswith("cuda"):
        from llmrec_cli.llm.precision import cpu_bf16_pays, model_width

        use_bf16, dtype_reason = cpu_bf16_pays(model_width(model))
        dtype = torch.bfloat16 if use_bf16 else torch.float32
    model.to(device=torch.device(device), dtype=dtype)
    model.requires_grad_(False)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if kind == "causal":
        model.config.use_cache = True  # inference; apply_lora turns it off with gradient checkpointing
    total, trainable = count_parameters(model)
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, name=str(model_cfg.name), source=source,
                       num_parameters=total, num_trainable=trainable, dtype=_dtype_name(dtype), device=device,
                       dtype_reason=dtype_reason)


def apply_lora(loaded: LoadedModel, lora_cfg: Any, gradient_checkpointing: bool = False) -> LoadedModel:
    """Wrap LOADED's model with peft LoRA adapters (`get_peft_model`); only the `lora_` weights are trainable.

    The model is already on its device (peft's advice: move first, wrap second; build the optimizer after
    this call). With GRADIENT_CHECKPOINTING, non-reentrant checkpointing is enabled together with
    `enable_input_require_grads` (a frozen base otherwise yields "element 0 of tensors does not require grad")
    and `use_cache` is turned off. `model.peft.top_layers=N` adapts only the top N transformer layers (peft's
    `layers_to_transform`): the backward pass then stops below them, so a step costs about forward + N/L
    backward instead of forward + a full backward (not for soft-token prompts, whose projector sits at the input).
    The returned `LoadedModel` has the recomputed parameter counts.
    """
    from peft import LoraConfig, get_peft_model

    targets = list(lora_cfg.target_modules or [])
    if not targets:
        raise ConfigError("model.peft.target_modules is empty: list the projections to adapt, "
                          "e.g. [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]")
    model = loaded.model
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise ConfigError(f"model.peft.target_modules: {', '.join(missing)} not found in {loaded.name} "
                          f"({type(model).__name__}); its linear layers include "
                          f"{', '.join(sorted(_linear_names(model)))}")
    task_type = "CAUSAL_LM" if loaded.kind == "causal" else "FEATURE_EXTRACTION"
    layers = None
    top = lora_cfg.get("top_layers") if hasattr(lora_cfg, "get") else getattr(lora_cfg, "top_layers", None)
    if top is not None:
        total = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        if not 1 <= int(top) <= max(total, 1):
            raise ConfigError(f"model.peft.top_layers={top} must be between 1 and the model's {total} layers "
                              f"(or null: every layer)")
        layers = list(range(total - int(top), total))
    config = LoraConfig(r=int(lora_cfg.r), lora_alpha=int(lora_cfg.alpha), lora_dropout=float(lora_cfg.dropout),
                        target_modules=targets, bias=str(lora_cfg.bias), task_type=task_type,
                        layers_to_transform=layers)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
    model = get_peft_model(model, config)
    total, trainable = count_parameters(model)
    return dataclasses.replace(loaded, model=model, num_parameters=total, num_trainable=trainable)


def load_model(model_cfg: Any, device: str = "cpu") -> LoadedModel:
    """`load_backbone`, then `apply_lora` when MODEL_CFG has a `peft` block."""
    loaded = load_backbone(model_cfg, device)
    if model_cfg.peft is not None:
        loaded = apply_lora(loaded, model_cfg.peft, bool(model_cfg.gradient_checkpointing))
    elif model_cfg.gradient_checkpointing:
        log.warning("model.gradient_checkpointing=true has no effect without model.peft (the backbone is frozen)")
    return loaded


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """What to log as MLflow params: backbone name, source, kind, parameter counts, dtype and device."""
    return {
        "backbone": loaded.name,
        "source": loaded.source,
        "kind": loaded.kind,
        "num_parameters": loaded.num_parameters,
        "num_trainable": loaded.num_trainable,
        "trainable_pct": round(100.0 * loaded.num_trainable / max(loaded.num_parameters, 1), 4),
        "dtype": loaded.dtype,
        "dtype_reason": loaded.dtype_reason,
        "device": loaded.device,
    }


def count_parameters(model: Any) -> tuple[int, int]:
    """(total, trainable) parameter counts; tied weights count once."""
    total = trainable = 0
    for p in model.parameters():  # parameters() yields each shared tensor once
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


def resolve_device(device: str) -> str:
    """`auto` -> cuda when available, else cpu; other values pass through (cpu, cuda, cuda:1, ...)."""
    if device in ("auto", "", None):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def resolve_dtype(name: str, device: str):
    """The torch dtype to load `model.dtype` in: auto is bfloat16 on CUDA and float32 elsewhere (on a CPU,
    `load_backbone` then converts to bfloat16 when `llm.precision.cpu_bf16_pays` measures that it pays)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# --- resolution -------------------------------------------------------------------------------------------


def _check_choices(model_cfg: Any) -> None:
    if str(model_cfg.name) == "none":
        raise ConfigError("model=none has no LLM backbone: pick one with model=... (see `llmrec ls`)")
    for key, allowed in (("kind", KINDS), ("weights", WEIGHTS), ("dtype", DTYPES), ("pooling", POOLINGS)):
        value = str(getattr(model_cfg, key))
        if value not in allowed:
            raise ConfigError(f"model.{key}={value} is not one of {', '.join(allowed)}")
    if not (model_cfg.tiny or model_cfg.package_dir or model_cfg.gguf_file or model_cfg.name_or_path):
        raise ConfigError(f"model={model_cfg.name} names no weights: set model.name_or_path to a hub id or a "
                          "local folder (or model.gguf_file, model.package_dir, model.tiny=true)")


def _load_tiny(kind: str):
    from llmrec_cli.llm.tiny import tiny_llama

    model, tokenizer = tiny_llama()
    if kind == "encoder":
        model = model.model  # the LlamaModel under the LM head: hidden states only
    return model, tokenizer, "tiny (llmrec_cli.llm.tiny, random weights)"


def _package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (its __init__ may need extra deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _resolve_source(model_cfg: Any) -> tuple[str, str]:
    """(folder or hub id to load with from_pretrained, a description of the source)."""
    fallback = model_cfg.name_or_path
    if model_cfg.package_dir:
        package, _, sub = str(model_cfg.package_dir).replace("\\", "/").partition("/")
        folder = _package_folder(package)
        if folder is not None and (folder / sub).is_dir():
            return str(folder / sub), f"package:{model_cfg.package_dir}"
        if not fallback:
            raise LlmrecError(f"model.package_dir={model_cfg.package_dir}: package {package} is not installed "
                              f"(pip install {package.replace('_', '-')}), or set model.name_or_path")
        log.info("model.package_dir=%s not installed; using model.name_or_path=%s", model_cfg.package_dir, fallback)
    if model_cfg.gguf_file:
        gguf = _find_gguf(model_cfg)
        if gguf is not None:
            folder = _dequantized_folder(gguf)
            return str(folder), f"gguf:{gguf} (cache {folder})"
        if not fallback:
            where = f"package {model_cfg.gguf_package}" if model_cfg.gguf_package else "that path"
            raise LlmrecError(f"model.gguf_file={model_cfg.gguf_file}: not found in {where}; install the package "
                              "or set model.name_or_path to a hub id or local folder")
        log.info("model.gguf_file=%s not found; using model.name_or_path=%s", model_cfg.gguf_file, fallback)
    path = Path(str(fallback)).expanduser()
    if path.is_dir():
        return str(path), f"local:{path}"
    if str(fallback).startswith(("/", "./", "../", "~")) or path.exists():
        raise LlmrecError(f"model.name_or_path={fallback}: no such folder; point it at a saved model folder "
                          "or a hub id")
    return str(fallback), f"hub:{fallback}"


def _find_gguf(model_cfg: Any) -> Path | None:
    """The GGUF file: `gguf_file` inside `gguf_package`, else `gguf_file` as a path; None when absent."""
    name = str(model_cfg.gguf_file)
    if model_cfg.gguf_package:
        folder = _package_folder(str(model_cfg.gguf_package))
        if folder is not None and (folder / name).is_file():
            return folder / name
        return None
    path = Path(name).expanduser()
    return path if path.is_file() else None


def _gguf_cache_key(gguf: Path) -> str:
    st = gguf.stat()
    return hashlib.sha256(f"{gguf.name}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _dequantized_folder(gguf: Path) -> Path:
    """`$LLMREC_CACHE_DIR/models/<stem>-<key>`: the GGUF dequantized and saved once, atomically (temp dir +
    os.replace), so later loads are a plain safetensors `from_pretrained`."""
    root = cache_dir() / "models"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf.stem)
    final = root / f"{stem}-{_gguf_cache_key(gguf)}"
    if (final / "config.json").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s once into %s (later loads read the cache)", gguf, final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=root))
    try:
        kwargs = {"gguf_file": gguf.name, **_local_kwargs()}
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs, **_gguf_kwargs())
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config  # dense weights now: reload as a plain checkpoint
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache folder is readable like any other
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep its folder
            if not (final / "config.json").is_file():
                raise
    except Exception as exc:
        raise LlmrecError(f"model.gguf_file={gguf}: could not dequantize it ({_first_line(exc)}); "
                          "check the file and `pip install 'gguf>=0.10' accelerate`") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _gguf_kwargs() -> dict[str, Any]:
    """transformers >= 5 keeps GGUF weights packed unless asked to dequantize (`GgufConfig`); 4.x always
    dequantizes and has no such class."""
    import transformers

    gguf_config = getattr(transformers, "GgufConfig", None)
    return {"quantization_config": gguf_config(dequantize=True)} if gguf_config is not None else {}


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _local_kwargs() -> dict[str, Any]:
    return {"local_files_only": True} if _offline() else {}


def _dtype_kwargs(dtype) -> dict[str, Any]:
    """`dtype=` on transformers >= 4.56, `torch_dtype=` before."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
    return {key: dtype}


def _hub_error(model_cfg: Any, src: str, exc: BaseException) -> LlmrecError:
    hint = ("set model.name_or_path to a local folder, or connect to the hub (unset HF_HUB_OFFLINE)"
            if _offline() else "set model.name_or_path to a local folder or a valid hub id (gated models "
            "need `huggingface-cli login`)")
    return LlmrecError(f"model.name_or_path={src}: cannot load {model_cfg.name} ({_first_line(exc)}); {hint}")


def _load_tokenizer(src: str, model_cfg: Any):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src, **_local_kwargs())
    except (OSError, ValueError) as exc:
        raise _hub_error(model_cfg, src, exc) from exc


def _load_model(src: str, model_cfg: Any, kind: str, dtype, random_init: bool):
    import transformers

    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
    try:
        if random_init:
            config = transformers.AutoConfig.from_pretrained(src, **_local_kwargs())
            return auto.from_config(config, **_dtype_kwargs(dtype))  # initialised directly in dtype
        return auto.from_pretrained(src, **_dtype_kwargs(dtype), **_local_kwargs())
    except (OSError, ValueError) as exc:
        raise _hub_error(model_cfg, src, exc) from exc


def _linear_names(model: Any) -> set[str]:
    import torch

    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n}


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0].strip()[:300]
