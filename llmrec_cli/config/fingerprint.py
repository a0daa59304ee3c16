"""The identity of a run's configuration for resuming: a hash of the resolved config without the keys a resumed
run may change. Tag `config_fingerprint` on every run; `resume=true` continues the newest unfinished run with the
same fingerprint (pipelines/train.py), and epoch checkpoints carry it (llm/training.py, crm/base.py)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import OmegaConf

#: Config keys that may differ between a run and the run it resumes (they do not change what an epoch does).
NOT_FINGERPRINTED = ("resume", "run_name", "output_dir", "tags", "tracking", "trainer.progress", "trainer.device",
                     "trainer.num_threads", "trainer.max_epochs", "trainer.epochs_from", "trainer.patience",
                     "trainer.eval_every", "method.max_epochs", "crm.max_epochs", "eval.batch_size",
                     "eval.protocols", "eval.splits", "eval.ks", "eval.save_full_topk")


def config_fingerprint(cfg: Any) -> str:
    """A hash of the resolved run config without the keys a resumed run may change (NOT_FINGERPRINTED)."""
    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    for key in NOT_FINGERPRINTED:
        node, *rest = key.split(".")
        parent = data
        while rest and isinstance(parent.get(node), dict):
            parent, node, rest = parent[node], rest[0], rest[1:]
        if not rest and isinstance(parent, dict):
            parent.pop(node, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
