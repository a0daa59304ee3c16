"""Dataset loaders. Importing this package registers every loader in `llmrec_cli.registry.DATASETS`."""
from llmrec_cli.data.sources import atomic, csv, movielens, synthetic  # noqa: F401  (registration)
from llmrec_cli.data.sources.base import DatasetConfig, hash_files, locate

__all__ = ["DatasetConfig", "hash_files", "locate"]
