"""Schemas of the conventional recommenders (light: no torch), one dataclass per `conf/crm/*.yaml`."""
from __future__ import annotations

from dataclasses import dataclass

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
