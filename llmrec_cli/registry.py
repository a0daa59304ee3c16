"""Explicit registries of datasets, CRMs and methods; they power `llmrec ls` and `llmrec validate`.

Registration is by decorator in each module; `load_all()` imports the packages that hold them.
Nothing here imports torch, so listing is instant.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any


@dataclass
class Entry:
    name: str
    obj: Any
    info: dict = field(default_factory=dict)


DATASETS: dict[str, Entry] = {}
CRMS: dict[str, Entry] = {}
METHODS: dict[str, Entry] = {}

# Modules whose import registers entries (the CRM and method modules import torch). Adding a CRM or a method
# means adding its module here, its schema to `crm/configs.py` / `methods/configs.py` and its YAML to conf/.
PLUGIN_MODULES = (
    "llmrec_cli.data.sources",
    "llmrec_cli.crm.pop",
    "llmrec_cli.crm.bpr",
    "llmrec_cli.crm.sasrec",
    "llmrec_cli.methods.baseline",
    "llmrec_cli.methods.q3_zero_shot",
    "llmrec_cli.methods.q3_embedding",
    "llmrec_cli.methods.q2_llm_encoder",
    "llmrec_cli.methods.q2_llm_augment",
    "llmrec_cli.methods.q4_tallrec",
    "llmrec_cli.methods.q4_listwise",
    "llmrec_cli.methods.q1_collm",
)


def _register(table: dict[str, Entry], name: str, **info) -> Callable:
    def deco(obj):
        if name in table and table[name].obj is not obj:
            raise ValueError(f"duplicate registration of {name!r}")
        table[name] = Entry(name, obj, info)
        return obj

    return deco


def register_dataset(name: str, **info) -> Callable:
    """Register a loader `fn(cfg: DatasetConfig) -> RawData` under `dataset=<name>`."""
    return _register(DATASETS, name, **info)


def register_crm(name: str, **info) -> Callable:
    """Register a CRM class (see `llmrec_cli.crm.base.CRM`) under `crm=<name>`."""
    return _register(CRMS, name, **info)


def register_method(name: str, quadrant: str, **info) -> Callable:
    """Register a method class (see `llmrec_cli.methods.base.Method`) under `method=<name>`."""
    return _register(METHODS, name, quadrant=str(quadrant), **info)


def load_all() -> None:
    for module in PLUGIN_MODULES:
        import_module(module)
