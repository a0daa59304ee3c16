"""Schemas of the conventional recommenders (light: no torch), one dataclass per `conf/crm/*.yaml`."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from omegaconf import OmegaConf

from llmrec_cli.config.schema import CRMConfig


@dataclass
class PopConfig(CRMConfig):
    """Most-popular items by training-interaction count (no training loop)."""


@dataclass
class BPRConfig(CRMConfig):
    """BPR-MF: user and item embeddings, pairwise loss with sampled negatives."""

    dim: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    reg: float = 1e-5  # L2 on the embeddings in the batch
    batch_size: int = 1024
    num_negatives: int = 1


@dataclass
class SASRecConfig(CRMConfig):
    """SASRec (Kang & McAuley 2018) with cross-entropy over all items."""

    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128


SCHEMAS = {"pop": PopConfig, "bpr": BPRConfig, "sasrec": SASRecConfig}


#: CRM keys that do not change the trained CRM (left out of `crm_config_hash`).
NOT_CRM_CONFIG = ("from_run", "trainable", "max_epochs")  # max_epochs: a default of trainer.max_epochs


def crm_config_hash(crm_cfg) -> str:
    """A short hash of the CRM's resolved config (without NOT_CRM_CONFIG): runs with equal hashes trained the same
    CRM (tag `crm_config_hash`; `crm.from_run=auto` matches on it)."""
    data = OmegaConf.to_container(crm_cfg, resolve=True) if OmegaConf.is_config(crm_cfg) else dict(crm_cfg)
    data = {k: v for k, v in data.items() if k not in NOT_CRM_CONFIG}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
