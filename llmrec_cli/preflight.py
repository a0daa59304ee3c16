"""Checks that run before any work and before an MLflow run exists: each failure is one line naming the key and
the fix, within seconds.

- the tracking store: a SQLite file's folder writable; an HTTP server answering `/health` within
  `TIMEOUT_SECONDS` (MLflow's own client would retry for about four minutes); MLflow's HTTP retries are capped;
- `output_dir` and the cache folder (`$LLMREC_CACHE_DIR`) writable;
- the model (methods with an LLM): a local folder holds `config.json`; a hub id is in the Hugging Face cache, or
  the hub answers (probed once, `TIMEOUT_SECONDS`), else it is an offline error (no retry storm);
- the data: `dataset.path` / `$LLMREC_DATA_DIR` hold the dataset's files (the loader names the missing
  sub-folder or file); the prepared data is cached, so the run itself reads it back at once.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from llmrec_cli.errors import ConfigError, DataError, LlmrecError

TIMEOUT_SECONDS = float(os.environ.get("LLMREC_PREFLIGHT_TIMEOUT", "5"))
STORE_HINT = ("or point llmrec at another store with tracking.uri=... / MLFLOW_TRACKING_URI (e.g. "
              "sqlite:///mlflow.db, no server needed)")


def check_run(cfg) -> None:
    """Everything `llmrec train` can check up front (see the module docstring)."""
    from llmrec_cli.tracking import resolve_uri
    from llmrec_cli.utils.io import cache_dir

    t0 = time.perf_counter()
    check_store(resolve_uri(cfg.tracking.uri))
    check_writable("output_dir", Path(str(cfg.output_dir)))
    check_writable("LLMREC_CACHE_DIR (the cache folder)", cache_dir())
    if cfg.method.get("needs_llm", False) and cfg.model.name != "none":
        check_model(cfg.model)
    if cfg.method.get("encoder_model") is not None:  # llm_augment's method.encoder
        check_model(cfg.method.encoder_model)
    check_data(cfg.dataset, needs_text=bool(cfg.method.get("needs_llm", False)))
    import logging

    logging.getLogger(__name__).info("preflight checks passed in %.2f s", time.perf_counter() - t0)


def check_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.is_dir():
            raise ConfigError(f"tracking.uri={uri} names a folder, not a database file: use sqlite:///{db}/mlflow.db")
        check_writable(f"tracking.uri={uri} (its folder)", db.parent)
        return
    if uri.startswith("file:") or "://" not in uri:
        path = Path(urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri)
        check_writable(f"tracking.uri={uri}", path)
        return
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # instead of ~4 minutes of backoff
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_SECONDS):
                return
        except urllib.error.HTTPError:
            return  # a server answered (auth or routing): let MLflow report the details
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LlmrecError(f"tracking.uri={uri}: no MLflow server answered within {TIMEOUT_SECONDS:g} s "
                              f"({reason}); start it (mlflow server --host ... --port ...) {STORE_HINT}") from None


def check_writable(key: str, folder: Path) -> None:
    """FOLDER exists (or can be made) and takes a file."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".llmrec-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{key}: {folder} is inside a file, not a folder; point it at a folder you can write "
                          f"to") from None
    except OSError as exc:
        raise ConfigError(f"{key}: {folder} is not writable ({exc.strerror or exc}); point it at a folder you can "
                          f"write to") from None


def check_model(model_cfg) -> None:
    """The weights `llm.loading` would load are reachable, without loading them; an endpoint answers and
    serves the model (one `/models` request), with its API key variable set."""
    from llmrec_cli.llm import loading

    if model_cfg.get("kind") == "endpoint":
        from llmrec_cli.llm.endpoint import Endpoint

        Endpoint(model_cfg).check()
        return
    if model_cfg.get("tiny"):
        return
    if model_cfg.get("package_dir"):
        package, _, sub = str(model_cfg.package_dir).replace("\\", "/").partition("/")
        folder = loading._package_folder(package)
        if folder is not None and (folder / sub).is_dir():
            return
    if model_cfg.get("gguf_file") and loading._find_gguf(model_cfg) is not None:
        return
    name = model_cfg.get("name_or_path")
    if not name:
        return  # loading reports what is missing (package not installed, no name_or_path)
    path = Path(str(name)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name_or_path={name}: the folder has no config.json; point it at a folder "
                              f"written by save_pretrained (or a hub id)")
        return
    if str(name).startswith(("/", "./", "../", "~")) or path.exists():
        raise ConfigError(f"model.name_or_path={name}: no such folder; point it at a saved model folder or a hub id")
    if _hub_cached(str(name)):
        return
    random = str(model_cfg.get("weights", "pretrained")) == "random"
    need = ("model.weights=random still needs the architecture's config.json, from the hub or a local folder"
            if random else "its weights are not in the Hugging Face cache")
    if loading._offline():
        raise ConfigError(f"model.name_or_path={name}: HF_HUB_OFFLINE is set and {need}; download it where there "
                          f"is internet (huggingface-cli download {name}) or set model.name_or_path to a local "
                          f"folder")
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    if not _reachable(host, 443):
        raise ConfigError(f"model.name_or_path={name}: {host} is unreachable (offline?) and {need}; set "
                          f"model.name_or_path to a local folder, or download it first (huggingface-cli download "
                          f"{name})")


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str) and Path(found).is_file()


def _reachable(host: str, port: int) -> bool:
    """One TCP connection attempt (DNS included) within TIMEOUT_SECONDS."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def check_data(dataset_cfg, needs_text: bool = False) -> None:
    """The dataset's files are where the config says (the loader's own checks name the missing sub-folder or
    file); preparing it here caches it for the run. NEEDS_TEXT (LLM methods): the items must have titles."""
    from llmrec_cli.data.load import load_prepared

    try:
        data = load_prepared(dataset_cfg)
    except (DataError, ConfigError):
        raise
    except FileNotFoundError as exc:
        raise DataError(f"dataset={dataset_cfg.name}: {exc.filename or exc} not found; check dataset.path / "
                        f"LLMREC_DATA_DIR") from None
    if needs_text and not data.has_item_text:
        hint = ("join titles with dataset.items_path=<metadata file: JSON lines or CSV keyed by item id>"
                if "items_path" in dataset_cfg else "use a dataset with item titles")
        raise DataError(f"dataset={dataset_cfg.name} has no item text (every item's title is its id), which LLM "
                        f"methods need: {hint}, or run a CRM (quadrant=baseline)")
