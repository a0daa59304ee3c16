"""CRM baselines on synthetic data: they learn, restore the best epoch, and work as components."""
from __future__ import annotations

import tempfile
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
    ctx = RunContext(cfg=cfg, seed=0, device="cpu", output_dir=Path(tempfile.mkdtemp(prefix="llmrec-test-")), progress=False,
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


# ---- the baselines the papers compare against --------------------------------------------------------------------

#: (crm, overrides) that learn synthetic data in a few seconds (small batches: synthetic has 200 users).
LEARNERS = {
    "sasrec-bce": ("sasrec", {"crm.loss": "bce", "trainer.max_epochs": 15}),
    "gru4rec": ("gru4rec", {"crm.batch_size": 32, "crm.lr": 0.003, "trainer.max_epochs": 15}),
    "bert4rec": ("bert4rec", {"crm.batch_size": 32, "trainer.max_epochs": 15}),
    "lightgcn": ("lightgcn", {"crm.lr": 0.01, "trainer.max_epochs": 15}),
}


@pytest.fixture(scope="module")
def trained(setup):
    """Each learner trained once on synthetic data, and Pop's test NDCG@10."""
    pop, _, _, evaluator = train(setup, "pop")
    out = {"pop": evaluator.evaluate(pop, splits=["test"], protocols=["full"]).metrics["test/full/ndcg_10"]}
    for label, (name, over) in LEARNERS.items():
        out[label] = train(setup, name, **over)
    return out


@pytest.mark.parametrize("label", list(LEARNERS))
def test_new_crms_learn_synthetic_data_and_beat_pop(trained, label):
    method, summary, logged, evaluator = trained[label]
    ndcg = evaluator.evaluate(method, splits=["test"], protocols=["full"]).metrics["test/full/ndcg_10"]
    assert ndcg > trained["pop"] + 0.05, (label, ndcg, trained["pop"])
    losses = [m["train/loss"] for _, m in logged]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("label", list(LEARNERS))
def test_new_crms_work_as_components(setup, trained, label):
    _, data, _ = setup
    crm = trained[label][0].crm
    users = np.arange(6)
    hist = [data.history(int(u), "test") for u in users]
    table = crm.item_embeddings()
    assert table.shape[0] == data.n_items + 1
    assert crm.user_embeddings(users, hist).shape == (6, table.shape[1])
    top = crm.topk(users, hist, k=10)
    for row, h in zip(top, hist, strict=True):
        assert not set(row.tolist()) & set(h.tolist()) and 0 not in row
    full = crm.score(users, hist, None)
    some = crm.score(users, hist, np.tile(np.arange(1, 6), (6, 1)))
    torch.testing.assert_close(some, full[:, 1:6])
    batched = crm.score(users, hist, None)
    single = torch.cat([crm.score(users[i : i + 1], hist[i : i + 1], None) for i in range(6)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_sasrec_loss_is_a_config_choice_and_a_wrong_one_is_named(setup):
    from llmrec_cli.errors import ConfigError

    cfg = compose_run(["dataset=synthetic", "crm=sasrec", "crm.loss=bce", "crm.num_negatives=3"])
    assert cfg.crm.loss == "bce" and cfg.crm.num_negatives == 3
    with pytest.raises(ConfigError, match="crm.loss=hinge"):
        registry.CRMS["sasrec"].obj(compose_run(["dataset=synthetic", "crm.loss=hinge"]).crm, 5, 5)


def test_sampled_bce_matches_its_formula_and_never_draws_the_target():
    from llmrec_cli.crm.sequential import sampled_bce

    torch.manual_seed(0)
    table, hidden = torch.randn(4, 3), torch.randn(50, 3)
    targets = torch.randint(1, 4, (50,))
    rng = np.random.default_rng(0)
    loss = sampled_bce(hidden, table, targets, 2, rng)
    neg = np.random.default_rng(0).integers(1, 4, size=(50, 2))
    tgt = targets.numpy()[:, None]
    clash_rng = np.random.default_rng(0)
    clash_rng.integers(1, 4, size=(50, 2))
    for _ in range(10):  # the same redraws as sampled_bce
        clash = neg == tgt
        if not clash.any():
            break
        neg[clash] = clash_rng.integers(1, 4, size=int(clash.sum()))
    assert not (neg == tgt).any()
    pos = torch.sigmoid((hidden * table[targets]).sum(-1))
    negs = torch.sigmoid(torch.einsum("nd,nkd->nk", hidden, table[torch.as_tensor(neg)]))
    expected = (-(pos.log()) - (1 - negs).log().sum(-1)).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_gru4rec_never_reads_padding():
    """A left-padded history gives the same states as the unpadded one (the GRU runs on packed sequences)."""
    cfg = compose_run(["dataset=synthetic", "crm=gru4rec"]).crm
    model = registry.CRMS["gru4rec"].obj(cfg, 3, 20).eval()
    seq = torch.tensor([[0, 0, 0, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        padded = model.encode(seq)
        alone = model.encode(seq[:1, 3:])
    torch.testing.assert_close(padded[0, 3:], alone[0])
    assert (padded[0, :3] == 0).all()


def test_lightgcn_adjacency_is_the_symmetric_normalisation():
    from llmrec_cli.crm.lightgcn import normalized_adjacency

    users, items = np.array([0, 0, 1, 1]), np.array([1, 2, 2, 2])  # (1, 2) twice: counted once
    adj = normalized_adjacency(users, items, 2, 3).to_dense().numpy()
    a = np.zeros((6, 6))
    for u, i in {(0, 1), (0, 2), (1, 2)}:
        a[u, 2 + i] = a[2 + i, u] = 1
    d = a.sum(1)
    inv = np.where(d > 0, d, 1) ** -0.5 * (d > 0)
    np.testing.assert_allclose(adj, inv[:, None] * a * inv[None], rtol=1e-6)


def test_lightgcn_eval_cache_follows_the_weights(setup, trained):
    crm = trained["lightgcn"][0].crm.eval()
    before = crm.item_embeddings().clone()
    assert crm.item_embeddings() is crm.item_embeddings()  # cached in eval mode
    with torch.no_grad():
        crm.item_emb.weight.mul_(2.0)
        changed = crm.item_embeddings().clone()
        crm.train()
        fresh = crm.propagate()[1]  # training mode never caches
        crm.eval()
        crm.item_emb.weight.div_(2.0)
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(changed, fresh)
    torch.testing.assert_close(crm.item_embeddings(), before)


def test_bert4rec_masks_at_least_one_item_per_window_and_scores_with_a_trailing_mask(setup):
    cfg = compose_run(["dataset=synthetic", "crm=bert4rec", "crm.mask_prob=0.0"]).crm
    model = registry.CRMS["bert4rec"].obj(cfg, 4, 30)
    seen = []
    real = model.encode

    def spy(seq, masked, table):
        seen.append(masked.clone())
        return real(seq, masked, table)

    model.encode = spy
    view = setup[1].train_view()
    model = registry.CRMS["bert4rec"].obj(cfg, view.n_users, view.n_items)
    model.encode = spy
    model.setup(view)
    model.train_epoch(view, model.make_optimizer(), np.random.default_rng(0), progress=False)
    assert seen and all((m.sum(1) == 1).all() and m[:, -1].all() for m in seen)  # mask_prob 0: the last item
    seen.clear()
    model.eval()
    model.score(np.arange(2), [np.array([1, 2, 3]), np.array([4])], None)
    assert seen[-1][:, -1].all() and seen[-1].sum() == 2
