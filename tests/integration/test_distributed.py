"""Multi-process LoRA training (llmrec_cli/llm/distributed.py), run on CPU over gloo with torchrun.

Two processes with batch size 4 must take the same optimizer steps as one process with batch size 8 (the same
seeded order; rank r trains on every second batch and the adapter gradients are averaged), so the adapters
they save agree; rank 0 alone records the run.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_cli import llmrec

COMMON = ["method=tallrec", "model=tiny-llama-lora", "model.peft.dropout=0.0", "dataset=synthetic",
          "trainer.device=cpu", "method.num_samples=32", "method.max_epochs=2", "trainer.max_epochs=2",
          "eval.max_users=12", "eval.monitor=valid/sampled/ndcg_10", "trainer.progress=false"]


def adapter(uri: str, run_id: str, dst: Path) -> dict[str, torch.Tensor]:
    path = mlflow.MlflowClient(tracking_uri=uri).download_artifacts(run_id, "checkpoint/adapter", str(dst))
    return load_file(str(Path(path) / "adapter_model.safetensors"))


def test_two_processes_step_like_one_process_with_twice_the_batch(work):
    path, uri = work
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLMREC_NO_PROGRESS": "1"}
    p = subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_port=29533", "-m", "llmrec_cli", "train",
                        *COMMON, "trainer.batch_size=4", f"tracking.uri={uri}", "run_name=two"],
                       cwd=path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    llmrec("train", *COMMON, "trainer.batch_size=8", f"tracking.uri={uri}", "run_name=one", cwd=path)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert sorted(runs["tags.mlflow.runName"]) == ["one", "two"]  # rank 1 logged nothing of its own
    two = runs[runs["tags.mlflow.runName"] == "two"].iloc[0]
    one = runs[runs["tags.mlflow.runName"] == "one"].iloc[0]
    assert two["status"] == "FINISHED" and two["tags.world_size"] == "2"
    a, b = adapter(uri, two["run_id"], path / "a"), adapter(uri, one["run_id"], path / "b")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert two["metrics.train/loss"] == pytest.approx(one["metrics.train/loss"], rel=1e-4)
