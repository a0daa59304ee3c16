"""Dataset loaders. Importing this package registers every loader in `llmrec_cli.registry.DATASETS`.

Every module here is imported (found by `pkgutil`), so a new loader is one module plus one YAML."""
import pkgutil
from importlib import import_module

from llmrec_cli.data.sources.base import DatasetConfig, hash_files, locate

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        import_module(f"{__name__}.{_module.name}")

__all__ = ["DatasetConfig", "hash_files", "locate"]
