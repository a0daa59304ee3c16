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


_DEFAULT_THREADS: int | None = None


def configure_threads(num_threads: int | None, preferred: int | None = None) -> tuple[int, str]:
    """torch's CPU threads: `trainer.num_threads` when given, else the workload's measured preference
    (PREFERRED, e.g. a small-tensor CRM), else torch's default (every core: LLM matmuls want them all).
    Returns (threads, where the number came from)."""
    import torch

    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()  # before any run of this process changed it
    if num_threads:
        torch.set_num_threads(int(num_threads))
        return int(num_threads), "trainer.num_threads"
    if preferred and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(min(int(preferred), os.cpu_count() or 1))
        return torch.get_num_threads(), "the CRM's cpu_threads (scripts/bench_crm.py --thread-matrix)"
    torch.set_num_threads(_DEFAULT_THREADS)
    return _DEFAULT_THREADS, "torch default (OMP_NUM_THREADS or every core)"
