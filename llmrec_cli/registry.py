"""Explicit registries of datasets, CRMs and methods; they power `llmrec ls` and `llmrec validate`.

Registration is by decorator in each module; `load_all()` imports every module of the packages that hold them
(`PLUGIN_PACKAGES`), so adding a module is enough to register it.
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

# Packages whose modules register entries by decorator when imported (the CRM and method modules import torch).
# Every module in them is imported by `load_all()`: a new CRM or method module needs no list of its own here.
PLUGIN_PACKAGES = ("llmrec_cli.data.sources", "llmrec_cli.crm", "llmrec_cli.methods")


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


def plugin_modules() -> list[str]:
    """Every module of PLUGIN_PACKAGES (found by `pkgutil`, not by a hand-kept list)."""
    import pkgutil

    out = []
    for name in PLUGIN_PACKAGES:
        package = import_module(name)
        out += [f"{name}.{m.name}" for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    return out


def load_all() -> None:
    for module in plugin_modules():
        import_module(module)
