"""Quadrant 3 on synthetic data with the tiny random Llama: every scoring mode runs end to end, in-process."""
from __future__ import annotations

import mlflow
import pytest

from llmrec_cli.config.compose import compose_run
from llmrec_cli.errors import ConfigError
from llmrec_cli.pipelines.train import run_train

QUICK = ["dataset=synthetic", "eval.max_users=12", "trainer.device=cpu", "trainer.progress=false"]


@pytest.mark.parametrize("scoring", ["pointwise", "likelihood", "listwise"])
def test_zero_shot_scoring_modes_log_metrics_prompts_and_verbalizers(work, scoring):
    path, uri = work
    cfg = compose_run(["method=zero_shot", f"method.scoring={scoring}", "model=tiny-llama", *QUICK,
                       f"tracking.uri={uri}", "method.num_demos=1" if scoring != "listwise" else "seed=0"])
    assert cfg.quadrant.id == "3"
    summary = run_train(cfg)
    m = summary.metrics
    assert 0.0 <= m["test/sampled/ndcg_10"] <= 1.0 and "test/full/ndcg_10" not in m  # no full ranking for LLMs
    assert m["test/pointwise/auc"] == m["test/pointwise/auc"] and m["cost/tokens"] > 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["quadrant"] == "3" and run.data.tags["crm"] == "none"
    arts = {a.path for a in client.list_artifacts(summary.run_id, "prompts")}
    assert f"prompts/template_{scoring}.txt" in arts and "prompts/example.txt" in arts
    if scoring == "pointwise":
        assert int(run.data.params["verbalizer.yes_token_id"]) != int(run.data.params["verbalizer.no_token_id"])
        assert "test/pointwise/logloss" in m
    if scoring == "listwise":
        assert run.data.params["verbalizer.index_token_ids"].startswith("[")


def test_embedding_zero_shot_ranks_the_full_catalogue(work):
    path, uri = work
    cfg = compose_run(["method=embedding_zero_shot", "model=tiny-llama", *QUICK, f"tracking.uri={uri}"])
    m = run_train(cfg).metrics
    assert 0.0 <= m["test/full/ndcg_10"] <= 1.0 and 0.0 <= m["test/sampled/ndcg_10"] <= 1.0


def test_llm_methods_need_an_llm():
    with pytest.raises(ConfigError, match="needs an LLM"):
        compose_run(["quadrant=3"])
