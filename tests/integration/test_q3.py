"""Quadrant 3 on synthetic data with the tiny random Llama: every scoring mode runs end to end, in-process."""
from __future__ import annotations

import tempfile

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


def test_crm_topk_reranks_a_reused_crm_and_reloads_for_eval(work):
    """Filter-then-rerank: a finished SASRec run is the pre-filter (crm.from_run), the run stays quadrant 3,
    its full-ranking metrics are the two-stage system's, and `llmrec eval` reproduces them from the checkpoint."""
    from llmrec_cli.pipelines.evaluate import run_eval

    path, uri = work
    base = run_train(compose_run(["quadrant=baseline", "crm=sasrec", *QUICK, "trainer.max_epochs=2",
                                  f"tracking.uri={uri}"]))
    cfg = compose_run(["quadrant=3", "method.scoring=likelihood", "model=tiny-llama", "candidates=crm_topk",
                       "candidates.k=5", f"crm.from_run={base.run_id}", *QUICK, f"tracking.uri={uri}"])
    summary = run_train(cfg)
    m = summary.metrics
    assert 0.0 <= m["test/full/ndcg_10"] <= 1.0 and m["cost/prefilter_seconds"] >= 0
    # ranks beyond k are the CRM's: hr@20 of the two-stage system equals the CRM's (the top 5 only reorders)
    assert m["test/full/hr_20"] == pytest.approx(base.metrics["test/full/hr_20"])
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(summary.run_id)
    assert run.data.tags["quadrant"] == "3" and run.data.tags["crm_from_run"] == base.run_id
    assert run.data.tags["crm_source"] == f"run:{base.run_id}"
    assert not any(k.startswith("crm/") for k in run.data.metrics)  # reused: no in-line CRM training
    again = run_eval(summary.run_id, None, [], uri).metrics
    for key in ("test/full/ndcg_10", "test/sampled/ndcg_10", "test/pointwise/auc"):
        assert again[key] == pytest.approx(m[key]), key


def test_crm_topk_rejects_a_crm_run_of_another_type(work):
    path, uri = work
    base = run_train(compose_run(["quadrant=baseline", "crm=bpr", *QUICK, "trainer.max_epochs=1",
                                  f"tracking.uri={uri}"]))
    cfg = compose_run(["quadrant=3", "model=tiny-llama", "candidates=crm_topk", f"crm.from_run={base.run_id}",
                       *QUICK, f"tracking.uri={uri}"])
    with pytest.raises(ConfigError, match="add crm=bpr"):
        run_train(cfg)


@pytest.mark.parametrize("crm", ["bpr", "gru4rec"])
def test_crm_topk_trains_its_crm_in_line_for_the_embedding_ranker(work, crm):
    path, uri = work
    cfg = compose_run(["method=embedding_zero_shot", "model=tiny-llama", "candidates=crm_topk", f"crm={crm}",
                       "trainer.max_epochs=2", *QUICK, f"tracking.uri={uri}"])
    summary = run_train(cfg)
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(summary.run_id)
    assert run.data.tags["crm_source"] == "inline" and run.data.metrics["crm/fit/epochs"] == 2
    assert "crm/train/loss" in run.data.metrics and run.data.params["candidates.prefilter"] == crm
    assert 0.0 <= summary.metrics["test/full/ndcg_10"] <= 1.0


def test_crm_from_run_auto_reuses_the_seeds_baseline_crm_or_trains_one(work):
    """`crm.from_run=auto` (the four-quadrant preset's shared pre-filter): the newest FINISHED baseline run of the
    same CRM config, seed and dataset; another seed or CRM config does not match, and with none it trains in-line."""
    path, uri = work
    common = ["crm=bpr", *QUICK, f"tracking.uri={uri}"]
    q3 = ["quadrant=3", "method.scoring=likelihood", "model=tiny-llama", "candidates=crm_topk", "candidates.k=5",
          "crm.from_run=auto"]
    alone = run_train(compose_run([*q3, *common, "trainer.max_epochs=1"]))
    client = mlflow.MlflowClient(tracking_uri=uri)
    tags = client.get_run(alone.run_id).data.tags
    assert tags["crm_source"] == "inline" and tags["crm_from_run_auto"] == "none found"
    base = run_train(compose_run(["quadrant=baseline", *common, "trainer.max_epochs=1"]))
    run_train(compose_run(["quadrant=baseline", *common, "trainer.max_epochs=1", "seed=1"]))  # another seed
    run_train(compose_run(["quadrant=baseline", *common, "trainer.max_epochs=1", "crm.dim=16"]))  # another CRM
    reused = run_train(compose_run([*q3, *common]))
    tags = client.get_run(reused.run_id).data.tags
    assert tags["crm_from_run"] == base.run_id and tags["crm_from_run_auto"] == base.run_id
    assert reused.metrics["test/full/hr_20"] == pytest.approx(base.metrics["test/full/hr_20"])


def test_generate_parses_the_in_process_models_answers_and_logs_their_validity(work):
    path, uri = work
    cfg = compose_run(["quadrant=3", "method.scoring=generate", "method.max_new_tokens=6", "model=tiny-llama",
                       "eval.protocols=[sampled]", *QUICK, f"tracking.uri={uri}"])
    summary = run_train(cfg)
    m = summary.metrics
    assert 0.0 <= m["test/sampled/ndcg_10"] <= 1.0 and m["answers/count"] > 0
    assert 0.0 <= m["answers/valid_answer_rate"] <= 1.0
    listed = {a.path for a in mlflow.MlflowClient(tracking_uri=uri).list_artifacts(summary.run_id, "answers")}
    assert "answers/samples.jsonl" in listed


def test_chain_of_thought_needs_generate():
    from pathlib import Path

    from llmrec_cli.methods.base import RunContext
    from llmrec_cli.methods.q3_zero_shot import ZeroShot

    cfg = compose_run(["quadrant=3", "method.reasoning=cot", "model=tiny-llama", *QUICK])
    with pytest.raises(ConfigError, match="method.reasoning=cot needs method.scoring=generate"):
        ZeroShot(cfg.method, RunContext(cfg=cfg, seed=0, device="cpu", output_dir=Path(tempfile.mkdtemp(prefix="llmrec-test-")))).setup(None)
