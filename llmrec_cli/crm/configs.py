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
    """SASRec (Kang & McAuley 2018): cross-entropy over all items (`loss: ce`) or the paper's BCE (`loss: bce`)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    loss: str = "ce"  # ce: softmax over all items | bce: sigmoid on the target and num_negatives sampled items
    num_negatives: int = 1  # loss=bce: uniform negatives per position


@dataclass
class GRU4RecConfig(CRMConfig):
    """GRU4Rec (Hidasi et al. 2016): a GRU over the sequence, next item at every position."""

    hidden: int = 64  # item embedding size (input and output)
    gru_hidden: int = 128  # GRU state size
    layers: int = 1
    dropout: float = 0.2
    max_len: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    loss: str = "ce"  # ce | bce (as SASRec)
    num_negatives: int = 1


@dataclass
class BERT4RecConfig(CRMConfig):
    """BERT4Rec (Sun et al. 2019): bidirectional transformer trained by cloze masking, CE over all items."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    mask_prob: float = 0.2  # share of a window's items replaced by [mask] (at least one per window)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256


@dataclass
class LightGCNConfig(CRMConfig):
    """LightGCN (He et al. 2020): embeddings propagated over the normalised user-item graph, BPR loss."""

    dim: int = 64
    layers: int = 3  # propagation steps; the final embedding is the mean over steps 0..layers
    lr: float = 1e-3
    weight_decay: float = 0.0
    reg: float = 1e-4  # L2 on the batch's step-0 embeddings
    batch_size: int = 2048
    num_negatives: int = 1


SCHEMAS = {"pop": PopConfig, "bpr": BPRConfig, "sasrec": SASRecConfig, "gru4rec": GRU4RecConfig,
           "bert4rec": BERT4RecConfig, "lightgcn": LightGCNConfig}


#: CRM keys that do not change the trained CRM (left out of `crm_config_hash`).
NOT_CRM_CONFIG = ("from_run", "trainable", "max_epochs")  # max_epochs: a default of trainer.max_epochs


def crm_config_hash(crm_cfg) -> str:
    """A short hash of the CRM's resolved config (without NOT_CRM_CONFIG): runs with equal hashes trained the same
    CRM (tag `crm_config_hash`; `crm.from_run=auto` matches on it)."""
    data = OmegaConf.to_container(crm_cfg, resolve=True) if OmegaConf.is_config(crm_cfg) else dict(crm_cfg)
    data = {k: v for k, v in data.items() if k not in NOT_CRM_CONFIG}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
