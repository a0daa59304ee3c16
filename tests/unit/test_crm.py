"""CRM baselines on synthetic data: they learn, restore the best epoch, and work as components."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmrec_cli import registry
from llmrec_cli.config.compose import compose_run
from llmrec_cli.data.candidates import get_plan
from llmrec_cli.data.load import load_prepared
from llmrec_cli.eval.evaluator import Evaluator
from llmrec_cli.methods.base import RunContext


@pytest.fixture(scope="module")
def setup():
    registry.load_all()
    cfg = compose_run(["dataset=synthetic", "trainer.device=cpu"])
    data = load_prepared(cfg.dataset)
    plan = get_plan(data, cfg.eval, 0)
    return cfg, data, Evaluator(data, plan, cfg.eval)


def train(setup, crm_name, **over):
    cfg, data, evaluator = setup
    cfg = compose_run(["dataset=synthetic", "trainer.device=cpu", f"crm={crm_name}",
                       *(["crm.max_len=50"] if crm_name == "sasrec" else []),
                       *[f"{k}={v}" for k, v in over.items()]])
    logged = []
    ctx = RunContext(cfg=cfg, seed=0, device="cpu", output_dir=Path("."), progress=False,
                     log_metrics=lambda m, step: logged.append((step, m)),
                     validate=lambda m: evaluator.evaluate(m, splits=["valid"], protocols=["full"]).metrics)
    method = registry.METHODS["baseline"].obj(cfg.method, ctx)
    summary = method.fit(data.train_view())
    return method, summary, logged, evaluator


def test_sasrec_and_bpr_beat_pop_on_learnable_synthetic_data(setup):
    results = {}
    for name, over in (("pop", {}), ("bpr", {"trainer.max_epochs": 30, "crm.lr": 0.01}),
                       ("sasrec", {"trainer.max_epochs": 15})):
        method, _, _, evaluator = train(setup, name, **over)
        results[name] = evaluator.evaluate(method, splits=["test"], protocols=["full"]).metrics["test/full/ndcg_10"]
    assert results["sasrec"] > results["pop"] + 0.1, results
    assert results["bpr"] > results["pop"], results


def test_best_epoch_is_restored(setup):
    method, summary, logged, evaluator = train(setup, "sasrec", **{"trainer.max_epochs": 6})
    valid = [m["valid/full/ndcg_10"] for _, m in logged]
    best = max(valid)
    assert summary["best/valid/full/ndcg_10"] == pytest.approx(best)
    again = evaluator.evaluate(method, splits=["valid"], protocols=["full"]).metrics["valid/full/ndcg_10"]
    assert again == pytest.approx(best)
    assert [step for step, _ in logged] == list(range(1, len(logged) + 1))


def test_early_stopping_stops(setup):
    _, summary, logged, _ = train(setup, "bpr", **{"trainer.max_epochs": 50, "trainer.patience": 1, "crm.lr": 0.5})
    assert summary["epochs"] < 50 and len(logged) == summary["epochs"]


def test_crm_component_api(setup):
    cfg, data, _ = setup
    method, _, _, _ = train(setup, "sasrec", **{"trainer.max_epochs": 1})
    crm = method.crm
    users = np.arange(5)
    hist = [data.history(int(u), "test") for u in users]
    assert crm.item_embeddings().shape == (data.n_items + 1, cfg.crm.hidden)
    assert crm.user_embeddings(users, hist).shape == (5, cfg.crm.hidden)
    top = crm.topk(users, hist, k=10)
    assert top.shape == (5, 10)
    for row, h in zip(top, hist, strict=True):
        assert not set(row.tolist()) & set(h.tolist()) and 0 not in row
    full = crm.score(users, hist, None)
    some = crm.score(users, hist, np.tile(np.arange(1, 6), (5, 1)))
    torch.testing.assert_close(some, full[:, 1:6])


def test_sasrec_scores_do_not_depend_on_batch_composition(setup):
    cfg, data, _ = setup
    method, _, _, _ = train(setup, "sasrec", **{"trainer.max_epochs": 1})
    users = np.arange(8)
    hist = [data.history(int(u), "test") for u in users]
    batched = method.crm.score(users, hist, None)
    single = torch.cat([method.crm.score(users[i : i + 1], hist[i : i + 1], None) for i in range(8)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_save_and_load_round_trip(setup, tmp_path):
    cfg, data, evaluator = setup
    method, _, _, _ = train(setup, "bpr", **{"trainer.max_epochs": 2})
    method.save(tmp_path)
    ctx = method.ctx
    fresh = registry.METHODS["baseline"].obj(ctx.cfg.method, ctx)
    fresh.load(tmp_path, data.train_view())
    a = evaluator.evaluate(method, splits=["test"]).metrics
    b = evaluator.evaluate(fresh, splits=["test"]).metrics
    assert a == b
