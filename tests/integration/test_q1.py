"""Quadrant 1 end to end on synthetic data: collm with the tiny LoRA Llama and SASRec, trained in-line or reused
from a finished baseline run; tags, artifacts, `llmrec eval` reproducing the run, bad `crm.from_run`."""
from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from llmrec_cli.config.compose import compose_run
from llmrec_cli.errors import ConfigError
from llmrec_cli.pipelines.evaluate import run_eval
from llmrec_cli.pipelines.train import run_train

QUICK = ["dataset=synthetic", "eval.max_users=12", "trainer.device=cpu", "trainer.progress=false"]
COLLM = ["method=collm", "model=tiny-llama-lora", "crm=sasrec", *QUICK, "method.num_samples=24",
         "method.max_epochs=2", "trainer.max_epochs=2"]


@pytest.mark.parametrize("head", ["pointwise", "listwise"])
def test_collm_trains_in_line_logs_and_reloads_exactly(work, head):
    path, uri = work
    summary = run_train(compose_run([*COLLM, f"method.head={head}", f"tracking.uri={uri}"]))
    m = summary.metrics
    assert 0.0 <= m["test/sampled/ndcg_10"] <= 1.0 and "test/full/ndcg_10" not in m
    assert m["fit/epochs"] == 2 and m["fit/examples"] == 24 and m["cost/crm_seconds"] > 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(summary.run_id)
    tags, params = run.data.tags, run.data.params
    assert run.info.status == "FINISHED" and tags["quadrant"] == "1" and tags["crm"] == "sasrec"
    assert tags["crm_source"] == "inline" and "crm/train/loss" in run.data.metrics
    assert int(params["collm.projector_parameters"]) > 0 and params["collm.crm_trainable"] == "False"
    assert params["train.monitor"] == "valid/sampled/ndcg_10"
    if head == "pointwise":
        assert "verbalizer.yes_token_id" in params and m["test/pointwise/auc"] == m["test/pointwise/auc"]
    else:
        assert params["verbalizer.index_token_ids"].startswith("[")
    ckpt = {a.path for a in client.list_artifacts(summary.run_id, "checkpoint")}
    assert {"checkpoint/projector.pt", "checkpoint/crm.pt", "checkpoint/adapter"} <= ckpt
    prompts = {a.path for a in client.list_artifacts(summary.run_id, "prompts")}
    assert {f"prompts/template_{head}.txt", "prompts/example.txt", "prompts/soft_tokens.txt"} <= prompts
    example = mlflow.artifacts.download_artifacts(run_id=summary.run_id, artifact_path="prompts/example.txt",
                                                 dst_path=str(path / "dl"), tracking_uri=uri)
    text = Path(example).read_text()
    assert "[item-emb]" in text and "[user-emb]" in text

    again = run_eval(summary.run_id, None, [], uri)  # adapter + projector + CRM from the checkpoint, no training
    for key, value in m.items():
        if key.startswith(("test/", "valid/")):
            assert again.metrics[key] == value, key
    assert not any(k.startswith(("crm/", "fit/")) for k in again.metrics)


@pytest.mark.parametrize("crm", ["lightgcn"])
def test_collm_reads_any_crm_of_the_papers(work, crm):
    """Quadrant 1 takes the new baselines' user and item embeddings as soft tokens."""
    path, uri = work
    over = [f"crm={crm}" if a == "crm=sasrec" else a for a in COLLM]
    summary = run_train(compose_run([*over, f"tracking.uri={uri}"]))
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["crm"] == crm
    assert 0.0 <= summary.metrics["test/sampled/ndcg_10"] <= 1.0


def test_collm_reuses_a_finished_crm_run(work):
    path, uri = work
    base = run_train(compose_run(["quadrant=baseline", "crm=sasrec", *QUICK, "trainer.max_epochs=2",
                                  f"tracking.uri={uri}"]))
    summary = run_train(compose_run([*COLLM, f"crm.from_run={base.run_id}", f"tracking.uri={uri}"]))
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["quadrant"] == "1"
    assert run.data.tags["crm_from_run"] == base.run_id and run.data.tags["crm_source"] == f"run:{base.run_id}"
    assert not any(k.startswith("crm/") for k in run.data.metrics)  # reused: no CRM training


def test_collm_rejects_a_bad_crm_run(work):
    path, uri = work
    with pytest.raises(ConfigError, match="crm.from_run=nope: no such run") as err:
        run_train(compose_run([*COLLM, "crm.from_run=nope", f"tracking.uri={uri}"]))
    assert "\n" not in str(err.value)
    bpr = run_train(compose_run(["quadrant=baseline", "crm=bpr", *QUICK, "trainer.max_epochs=1",
                                 f"tracking.uri={uri}"]))
    with pytest.raises(ConfigError, match="add crm=bpr") as err:
        run_train(compose_run([*COLLM, f"crm.from_run={bpr.run_id}", f"tracking.uri={uri}"]))
    assert "\n" not in str(err.value)
    failed = mlflow.MlflowClient(tracking_uri=uri).search_runs(
        [mlflow.get_experiment_by_name("llmrec").experiment_id], "attributes.status = 'FAILED'")
    assert len(failed) == 2
