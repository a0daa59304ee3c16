"""Get prepared data for a dataset config: from the cache, or read with its loader, prepare and cache."""
from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from llmrec_cli import registry
from llmrec_cli.data import prepare as prep
from llmrec_cli.errors import ConfigError
from llmrec_cli.utils.progress import progress_bar

log = logging.getLogger(__name__)


def load_raw(dataset_cfg: DictConfig):
    import llmrec_cli.data.sources  # noqa: F401  (registers loaders)

    entry = registry.DATASETS.get(dataset_cfg.loader)
    if entry is None:
        raise ConfigError(f"dataset.loader={dataset_cfg.loader} is not a registered loader: "
                          f"one of {', '.join(sorted(registry.DATASETS))}")
    return entry.obj(dataset_cfg)


def load_prepared(dataset_cfg: DictConfig, force: bool = False, progress: bool = True) -> prep.PreparedData:
    cfg = OmegaConf.to_container(dataset_cfg, resolve=True)
    key = prep.dataset_key(cfg)
    if not force:
        cached = prep.load(key)
        if cached is not None:
            return cached
    from llmrec_cli.utils.io import file_lock

    # Parallel sweep jobs on a cold cache: one prepares, the others wait and then read its result.
    with file_lock(prep.cache_path(key).parent / f".{key}.lock"):
        if not force:
            cached = prep.load(key)
            if cached is not None:
                return cached
        return _prepare(dataset_cfg, cfg, key, progress)


def _prepare(dataset_cfg: DictConfig, cfg: dict, key: str, progress: bool) -> prep.PreparedData:
    log.info("preparing dataset=%s (cache key %s)", cfg["name"], key)
    bar = progress_bar(None, desc=f"prepare {cfg['name']}", total=3, enabled=progress)
    try:
        raw = load_raw(dataset_cfg)
        _advance(bar, "files read")
        data = prep.prepare(raw, cfg)
        _advance(bar, "filtered and split")
        prep.save(data)
        _advance(bar, "cached")
    finally:
        if bar is not None:
            bar.close()
    return data


def _advance(bar, note: str) -> None:
    if bar is not None:
        bar.set_postfix_str(note)
        bar.update(1)
