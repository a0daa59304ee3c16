"""Collectives hand the backend tensors on the device it serves: NCCL (GPUs) rejects CPU tensors, which the
gloo-on-CPU integration test cannot notice. Here a fake NCCL backend does what the real one does with a CPU
tensor ("No backend type associated with device type cpu")."""
from __future__ import annotations

import pytest
import torch

from llmrec_cli.llm import distributed


class _UsesCuda(Exception):
    pass


@pytest.fixture
def fake_nccl(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")

    def all_reduce(tensor, *args, **kwargs):
        if tensor.device.type == "cpu":
            raise RuntimeError("No backend type associated with device type cpu")

    def current_device():  # where a real NCCL process would put the tensor; this machine has no GPU
        raise _UsesCuda

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.cuda, "current_device", current_device)


def test_sum_across_never_hands_nccl_a_cpu_tensor(fake_nccl):
    with pytest.raises(_UsesCuda):  # before the fix: RuntimeError from the fake NCCL all_reduce
        distributed.sum_across(1.0, 2.0, 3.0)


def test_gloo_reduces_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "gloo")
    assert distributed.reduction_device() == torch.device("cpu")


def test_nccl_reduces_on_the_current_gpu(monkeypatch):
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.reduction_device() == torch.device("cuda", 3)
