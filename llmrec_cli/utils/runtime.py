"""The one place that seeds everything and decides the device."""
from __future__ import annotations

import os
import random

import numpy as np

from llmrec_cli.errors import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    import torch

    torch.manual_seed(seed)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible: use trainer.device=auto or cpu")
    return name


def configure_threads(num_threads: int | None) -> None:
    if num_threads:
        import torch

        torch.set_num_threads(int(num_threads))
