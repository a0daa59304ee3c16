"""Quadrant 2 end to end on synthetic data with the tiny random Llama: train, log, reload for `llmrec eval`."""
from __future__ import annotations

import mlflow
import pytest

from llmrec_cli.config.compose import compose_run
from llmrec_cli.pipelines.evaluate import run_eval
from llmrec_cli.pipelines.train import run_train

QUICK = ["model=tiny-llama", "dataset=synthetic", "eval.max_users=12", "trainer.max_epochs=2", "trainer.device=cpu",
         "trainer.progress=false"]
SHORT = {"sasrec": ["crm.max_len=30"], "bpr": [], "gru4rec": ["crm.max_len=30"], "bert4rec": ["crm.max_len=30"],
         "lightgcn": []}  # synthetic sequences are shorter than 30
REPRODUCED = ("test/full/ndcg_10", "test/sampled/ndcg_10", "test/pointwise/auc", "valid/full/ndcg_10")


def check_run(uri: str, summary, artifacts: set[str]) -> mlflow.entities.Run:
    m = summary.metrics
    assert 0.0 <= m["test/sampled/ndcg_10"] <= 1.0 and 0.0 <= m["test/full/ndcg_10"] <= 1.0
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["quadrant"] == "2"
    assert [h.step for h in client.get_metric_history(summary.run_id, "train/loss")] == [1, 2]
    listed = {a.path for folder in ("", "prompts", "augment", "checkpoint")
              for a in client.list_artifacts(summary.run_id, folder or None)}
    assert artifacts <= listed, artifacts - listed
    again = run_eval(summary.run_id, None, [], uri).metrics  # from the checkpoint, without retraining
    for key in REPRODUCED:
        assert again[key] == m[key], key
    assert "train/loss" not in again
    return run


@pytest.mark.parametrize("crm", ["sasrec", "bpr"])
@pytest.mark.parametrize("mode", ["init", "feature"])
def test_llm_encoder_trains_the_crm_on_text_and_reloads(work, mode, crm):
    path, uri = work
    summary = run_train(compose_run(["method=llm_encoder", f"method.mode={mode}", f"crm={crm}", *SHORT[crm], *QUICK,
                                     f"tracking.uri={uri}"]))
    run = check_run(uri, summary, {"checkpoint/q2_crm.pt", "prompts/example_item_texts.txt"})
    params = run.data.params
    assert run.data.tags["crm"] == crm and params["llm_encoder.text_dim"] == "32"
    assert params["llm_encoder.mode"] == mode
    assert summary.metrics["cost/embed_seconds"] >= 0 and "fit/best/valid/full/ndcg_10" in summary.metrics


@pytest.mark.parametrize("crm", ["gru4rec", "bert4rec", "lightgcn"])
def test_the_papers_baselines_take_text_item_tables_too(work, crm):
    """Every trainable CRM with an item table is a quadrant-2 component (its `item_emb` from text)."""
    path, uri = work
    summary = run_train(compose_run(["method=llm_encoder", "method.mode=feature", f"crm={crm}", *SHORT[crm],
                                     *QUICK, f"tracking.uri={uri}"]))
    run = check_run(uri, summary, {"checkpoint/q2_crm.pt"})
    assert run.data.tags["crm"] == crm


def test_llm_augment_generates_profiles_and_feeds_the_crm(work):
    path, uri = work
    summary = run_train(compose_run(["method=llm_augment", "method.user_profiles=true", "method.max_new_tokens=6",
                                     "method.log_samples=3", *SHORT["sasrec"], *QUICK, f"tracking.uri={uri}"]))
    run = check_run(uri, summary, {"checkpoint/q2_crm.pt", "augment/prompt_templates.txt", "augment/samples.txt"})
    m = summary.metrics
    n_users, n_items = int(run.data.tags["n_users"]), int(run.data.tags["n_items"])
    assert m["cost/generated_prompts"] == n_users + n_items and m["cost/generated_tokens"] > 0
    assert m["cost/generate_seconds"] > 0
    text = mlflow.artifacts.load_text(f"runs:/{summary.run_id}/augment/samples.txt")
    assert text.count("### item:") == 3 and text.count("### user:") == 3
    # a second run finds every generation in the cache
    again = run_train(compose_run(["method=llm_augment", "method.user_profiles=true", "method.max_new_tokens=6",
                                   *SHORT["sasrec"], *QUICK, f"tracking.uri={uri}"]))
    assert again.metrics["cost/generated_prompts"] == 0
    assert again.metrics["cost/generation_cache_hits"] == n_users + n_items
    for key in REPRODUCED:  # cached profiles and embeddings (no model loaded) train the same CRM
        assert again.metrics[key] == m[key], key


def test_llm_encoder_warm_starts_from_a_crm_run(work):
    path, uri = work
    base = run_train(compose_run(["quadrant=baseline", "crm=sasrec", *SHORT["sasrec"], *QUICK[1:],
                                  f"tracking.uri={uri}"]))
    summary = run_train(compose_run(["method=llm_encoder", "method.mode=init", f"crm.from_run={base.run_id}",
                                     *SHORT["sasrec"], *QUICK,
                                     f"tracking.uri={uri}"]))
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["crm_from_run"] == base.run_id
    assert int(run.data.params["llm_encoder.warm_start_tensors"]) > 0
