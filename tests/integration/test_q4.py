"""Quadrant 4 on synthetic data with the tiny LoRA Llama: tuning, logging, save/load, resume, config rules."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llmrec_cli import registry
from llmrec_cli.config.compose import compose_run
from llmrec_cli.data.load import load_prepared
from llmrec_cli.errors import ConfigError
from llmrec_cli.llm.training import SENTINEL, STATE_FILE, Example, answer_loss, collate, encode
from llmrec_cli.methods.base import RunContext
from llmrec_cli.pipelines.train import run_train
from tests.helpers import crash_then_constant

QUICK = ["model=tiny-llama-lora", "dataset=synthetic", "eval.max_users=12", "trainer.device=cpu",
         "trainer.progress=false", "method.num_samples=24"]
TEMPLATE = {"tallrec": "pointwise", "listwise_lora": "listwise"}


def lora_b(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


def make(name: str, out: Path, overrides=(), validate=None, log=None):
    """A fitted-to-be method with a hand-made context (no MLflow): (method, training view)."""
    registry.load_all()
    cfg = compose_run([f"method={name}", *QUICK, "eval.monitor=valid/sampled/ndcg_10", *overrides])
    ctx = RunContext(cfg=cfg, seed=int(cfg.seed), device="cpu", output_dir=out, validate=validate, progress=False,
                     log_metrics=(lambda m, step: log.append((step, m))) if log is not None else (lambda m, s: None),
                     log_params=(lambda p: log.append(("params", p))) if log is not None else (lambda p: None))
    return registry.METHODS[name].obj(cfg.method, ctx), load_prepared(cfg.dataset).train_view()


@pytest.mark.parametrize("name", ["tallrec", "listwise_lora"])
def test_q4_methods_tune_log_and_save_the_adapter(work, name):
    path, uri = work
    summary = run_train(compose_run([f"method={name}", *QUICK, "method.max_epochs=2", f"tracking.uri={uri}"]))
    m = summary.metrics
    assert 0.0 <= m["test/sampled/ndcg_10"] <= 1.0 and "test/full/ndcg_10" not in m
    assert m["fit/epochs"] == 2 and m["fit/examples"] == 24 and m["cost/train_seconds"] > 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["quadrant"] == "4" and run.data.tags["crm"] == "none"
    params = run.data.params
    assert params["train.monitor"] == "valid/sampled/ndcg_10"  # valid/full is not available to LLM rankers
    assert [h.step for h in client.get_metric_history(summary.run_id, "train/loss")] == [1, 2]
    assert len(client.get_metric_history(summary.run_id, "train/tokens_per_second")) == 2
    top = {a.path for a in client.list_artifacts(summary.run_id)}
    prompts = {a.path for a in client.list_artifacts(summary.run_id, "prompts")}
    adapter = {a.path for a in client.list_artifacts(summary.run_id, "checkpoint/adapter")}
    assert "adapter" in top and f"prompts/template_{TEMPLATE[name]}.txt" in prompts and "prompts/example.txt" in prompts
    assert "checkpoint/adapter/adapter_model.safetensors" in adapter
    if name == "tallrec":
        assert int(params["verbalizer.yes_token_id"]) != int(params["verbalizer.no_token_id"])
        assert m["test/pointwise/auc"] == m["test/pointwise/auc"] and "test/pointwise/logloss" in m
    else:
        assert params["verbalizer.index_token_ids"].startswith("[")
    weights = load_file(str(path / "outputs" / summary.run_id / "checkpoint" / "adapter" / "adapter_model.safetensors"))
    b = [t for k, t in weights.items() if "lora_B" in k]
    assert b and all(float(t.abs().sum()) > 0 for t in b)  # lora_B starts at zero: training moved it


@pytest.mark.parametrize("name", ["tallrec", "listwise_lora"])
def test_save_then_load_gives_identical_scores(tmp_path, name):
    method, data = make(name, tmp_path / "run", ["method.max_epochs=1"])
    method.fit(data)
    assert all(float(t.abs().sum()) > 0 for t in lora_b(method.loaded.model).values())
    users = np.arange(4)
    full = load_prepared(method.ctx.cfg.dataset)
    items = np.stack([full.sequence(int(u))[-6:] for u in users])
    hist = [full.history(int(u), "test") for u in users]
    before = method.score(users, hist, items)
    files = method.save(tmp_path / "ckpt")
    assert any(f.name == "adapter_model.safetensors" for f in files)
    again, _ = make(name, tmp_path / "run2")
    again.load(tmp_path / "ckpt", data)
    np.testing.assert_array_equal(again.score(users, hist, items), before)


def test_resume_continues_at_the_next_epoch_and_matches_an_uninterrupted_run(tmp_path):
    crash_at_epoch_2, constant = crash_then_constant()

    two = ["method.max_epochs=2", "trainer.patience=5"]
    first, data = make("tallrec", tmp_path / "outputs" / "a", two, validate=crash_at_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit(data)
    last = tmp_path / "outputs" / "a" / "checkpoints" / "last"
    assert (last / SENTINEL).is_file() and torch.load(last / STATE_FILE, weights_only=False)["epoch"] == 1

    log: list = []  # a new run folder beside the crashed one: found by its config fingerprint
    resumed, _ = make("tallrec", tmp_path / "outputs" / "b", [*two, "resume=true"], validate=constant, log=log)
    summary = resumed.fit(data)
    assert [step for step, _ in log if step != "params"] == [2]
    assert summary["start_epoch"] == 2 and summary["epochs"] == 2
    assert any("train.resumed_from" in p and "outputs/a" in p["train.resumed_from"] for s, p in log if s == "params")

    fresh, _ = make("tallrec", tmp_path / "outputs" / "c", two, validate=constant)
    fresh.fit(data)
    resumed_weights = dict(resumed.loaded.model.named_parameters())
    for key, value in fresh.loaded.model.named_parameters():
        if value.requires_grad:
            torch.testing.assert_close(resumed_weights[key], value)


def test_early_stopping_restores_the_best_epoch(tmp_path):
    values = iter([0.5, 0.4, 0.3])
    method, data = make("listwise_lora", tmp_path / "run", ["method.max_epochs=3", "trainer.patience=1"],
                        validate=lambda m: {"valid/sampled/ndcg_10": next(values)})
    summary = method.fit(data)
    assert (summary["epochs"], summary["best_epoch"]) == (2, 1)
    best = torch.load(tmp_path / "run" / "checkpoints" / "last" / STATE_FILE, weights_only=False)["best_weights"]
    for name, p in method.loaded.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), best[name])


def test_answer_loss_matches_the_full_logits_at_the_answer_position():
    from llmrec_cli.llm.tiny import tiny_llama

    model, tok = tiny_llama()
    ids_a, ids_b = (tok(f" {c}", add_special_tokens=False)["input_ids"][0] for c in "AB")
    examples = [Example("Will the user like it? Answer:", " Yes"), Example("Pick one. Answer:", " B", (ids_a, ids_b))]
    rows = encode(examples, tok, 64)
    ids, mask, labels, choices = collate(rows, tok.pad_token_id, "cpu")
    with torch.no_grad():
        loss = answer_loss(model.model, lambda h: model.lm_head(h).float(), ids, mask, labels, choices)
        logits = model(input_ids=ids, attention_mask=mask).logits
    yes_pos, pick_pos = len(rows[0].prompt) - 1, len(rows[1].prompt) - 1
    full = torch.log_softmax(logits[0, yes_pos], -1)[rows[0].answer[0]]
    pick = torch.log_softmax(logits[1, pick_pos, [ids_a, ids_b]], -1)[1]
    torch.testing.assert_close(loss, -(full + pick) / 2)


def test_quadrant_4_defaults_to_listwise_lora_and_needs_a_lora_model():
    assert compose_run(["quadrant=4", "model=tiny-llama-lora"]).method.name == "listwise_lora"
    with pytest.raises(ConfigError, match="needs? a LoRA model|no `peft` block"):
        compose_run(["method=tallrec", "model=tiny-llama"])


def test_tuned_ranker_reranks_crm_top_k_and_reloads_with_its_prefilter(work):
    from llmrec_cli.pipelines.evaluate import run_eval

    path, uri = work
    cfg = compose_run(["method=listwise_lora", *QUICK, "method.max_epochs=1", "candidates=crm_topk", "candidates.k=8",
                       "crm=bpr", "trainer.max_epochs=1", f"tracking.uri={uri}"])
    summary = run_train(cfg)
    assert 0.0 <= summary.metrics["test/full/ndcg_10"] <= 1.0
    arts = {a.path for a in mlflow.MlflowClient(tracking_uri=uri).list_artifacts(summary.run_id, "checkpoint")}
    assert "checkpoint/crm.pt" in arts
    again = run_eval(summary.run_id, None, [], uri).metrics
    for key in ("test/full/ndcg_10", "test/sampled/ndcg_10"):
        assert again[key] == pytest.approx(summary.metrics[key]), key
