"""Quadrant 2 pieces: text-initialised and text-fed CRM item tables, the CRM hooks, the embedding and
generation caches, batched generation, and user profiles built from training items only."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from llmrec_cli import registry
from llmrec_cli.config.compose import compose_run
from llmrec_cli.crm.reuse import build_crm
from llmrec_cli.data.load import load_prepared
from llmrec_cli.errors import ConfigError
from llmrec_cli.llm.generation import GenerationCache, GenerationStats, generate
from llmrec_cli.llm.tiny import sharpen, tiny_llama
from llmrec_cli.methods.base import RunContext
from llmrec_cli.methods.q2_llm_encoder import TextItemEncoder, prepare_text

QUICK = ["dataset=synthetic", "model=tiny-llama", "trainer.device=cpu", "trainer.progress=false"]


def make(name: str, overrides=(), params: list | None = None):
    """(method, data) with a hand-made context (no MLflow); logged params go to PARAMS."""
    registry.load_all()
    cfg = compose_run([f"method={name}", *QUICK, *overrides])
    ctx = RunContext(cfg=cfg, seed=0, device="cpu", output_dir=Path(tempfile.mkdtemp(prefix="llmrec-test-")), progress=False,
                     log_params=(params.append if params is not None else lambda p: None))
    method = registry.METHODS[name].obj(cfg.method, ctx)
    data = load_prepared(cfg.dataset)
    method.data = data
    return method, data


def text_vectors(n_items: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    """Low-rank 'text embeddings' with a large shared component (like mean-pooled LM states); row 0 zero."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_items, 6)) @ rng.normal(size=(6, dim)) + 5.0 + 0.1 * rng.normal(size=(n_items, dim))
    return np.concatenate([np.zeros((1, dim)), x]).astype(np.float32)


def r_squared(target: np.ndarray, features: np.ndarray) -> float:
    """Share of TARGET's variance explained by a least-squares linear map from FEATURES (with intercept)."""
    x = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    resid = target - x @ coef
    return 1.0 - float((resid ** 2).sum() / ((target - target.mean(0)) ** 2).sum())


@pytest.mark.parametrize("whiten", [False, True])
def test_init_mode_initialises_the_item_table_from_the_text(whiten):
    method, data = make("llm_encoder", ["method.mode=init", "crm=sasrec", f"method.whiten={whiten}"])
    text = text_vectors(data.n_items)
    crm = method.build(data, text, None)
    table = crm.item_embeddings().detach().numpy()
    assert crm.item_encoder is None and np.all(table[0] == 0)
    k = min(text.shape[1], table.shape[1])
    # the first k columns are a linear function of the text; a random table of the same shape is not
    assert r_squared(table[1:, :k], text[1:]) > 0.999
    fresh = build_crm(method.ctx.cfg.crm, data.n_users, data.n_items, "cpu").item_emb.weight.detach().numpy()
    assert r_squared(fresh[1:, :k], text[1:]) < 0.5
    assert table[1:, :k].std() == pytest.approx(0.02, rel=0.05)  # SASRec's init std
    cols = np.cov(table[1:, :k].T).diagonal()
    if whiten:  # every principal coordinate gets the same variance
        np.testing.assert_allclose(cols, cols.mean(), rtol=1e-3)
    else:  # the text's geometry survives: item-item similarities follow those of the centred text
        centred = text[1:] - text[1:].mean(0)
        corr = np.corrcoef((table[1:, :k] @ table[1:, :k].T).ravel(), (centred @ centred.T).ravel())[0, 1]
        assert corr > 0.99 and cols[0] > 10 * cols[-1]


def test_feature_mode_trains_the_adapter_and_keeps_the_text_frozen():
    method, data = make("llm_encoder", ["method.mode=feature", "method.adapter=mlp", "crm=sasrec", "crm.max_len=20"])
    text = text_vectors(data.n_items)
    crm = method.build(data, text, None)
    enc = crm.item_encoder
    assert isinstance(enc, TextItemEncoder) and not enc.text.requires_grad
    assert all(not torch.equal(p, enc.text) for p in crm.parameters())  # the buffer is not a parameter
    frozen = enc.text.clone()
    adapter = {n: p.detach().clone() for n, p in enc.adapter.named_parameters()}
    ids_before = crm.item_emb.weight.detach().clone()
    crm.setup(data.train_view())
    crm.train()
    crm.train_epoch(data.train_view(), crm.make_optimizer(), np.random.default_rng(0), progress=False)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in enc.adapter.parameters())
    assert all(not torch.equal(p, adapter[n]) for n, p in enc.adapter.named_parameters())
    assert not torch.equal(crm.item_emb.weight, ids_before)  # fuse_id: the ID table trains too
    torch.testing.assert_close(enc.text, frozen, rtol=0, atol=0)
    # the effective table is what the CRM scores with: adapter(text) + ID, row 0 zero
    crm.eval()
    table = crm.item_embeddings().detach()
    torch.testing.assert_close(table[1:], (enc.adapter(enc.text) + crm.item_emb.weight)[1:].detach())
    assert torch.all(table[0] == 0)
    users = np.arange(3)
    hist = [data.history(int(u), "test") for u in users]
    h = crm.user_embeddings(users, hist)
    torch.testing.assert_close(crm.score(users, hist, None), h @ table.T)
    assert "item_encoder.text" in crm.state_dict()


@pytest.mark.parametrize("name", ["sasrec", "bpr"])
def test_crm_without_hooks_is_the_plain_baseline(name):
    method, data = make("llm_encoder", [f"crm={name}"])
    torch.manual_seed(0)
    plain = build_crm(method.ctx.cfg.crm, data.n_users, data.n_items, "cpu").eval()
    torch.manual_seed(0)
    hooked = build_crm(method.ctx.cfg.crm, data.n_users, data.n_items, "cpu").eval()
    assert plain.item_encoder is None and plain.user_encoder is None
    assert plain.item_table() is plain.item_emb.weight and plain.item_embeddings() is plain.item_emb.weight
    hooked.set_item_encoder(TextItemEncoder(torch.randn(data.n_items + 1, 8), plain.item_emb.embedding_dim,
                                            "linear", True))
    hooked.set_item_encoder(None)
    assert list(hooked.state_dict()) == list(plain.state_dict())
    assert not any(k.startswith(("item_encoder", "user_encoder")) for k in plain.state_dict())
    users = np.arange(4)
    hist = [data.history(int(u), "test") for u in users]
    assert torch.equal(hooked.score(users, hist, None), plain.score(users, hist, None))


def test_user_encoder_starts_at_zero_and_is_added_to_the_user_representation():
    method, data = make("llm_augment", ["crm=bpr", "method.user_profiles=true"])
    users = np.random.default_rng(0).normal(size=(data.n_users, 10)).astype(np.float32)
    crm = method.build(data, text_vectors(data.n_items), users)
    u = np.arange(5)
    torch.testing.assert_close(crm.user_embeddings(u, []), crm.user_emb(torch.as_tensor(u)))
    with torch.no_grad():
        crm.user_encoder.proj.weight.fill_(0.1)
    expected = crm.user_emb(torch.as_tensor(u)) + crm.user_encoder.proj(crm.user_encoder.text[u])
    torch.testing.assert_close(crm.user_embeddings(u, []), expected)


def test_prepare_text_centres_and_whitens():
    text = text_vectors(50)
    plain, white = prepare_text(text), prepare_text(text, whiten=True)
    assert np.all(plain[0] == 0) and np.abs(plain[1:].mean(0)).max() < 1e-5
    assert np.linalg.norm(plain[1:], axis=1).mean() == pytest.approx(1.0, rel=1e-5)
    cov = np.cov(white[1:].T)
    np.testing.assert_allclose(cov / cov[0, 0], np.eye(len(cov)), atol=1e-4)


def test_warm_start_copies_the_run_weights_but_keeps_the_text_table(monkeypatch):
    import llmrec_cli.crm.reuse as reuse

    method, data = make("llm_encoder", ["method.mode=init", "crm=sasrec", "crm.from_run=abc123"])
    torch.manual_seed(1)
    source = build_crm(method.ctx.cfg.crm, data.n_users, data.n_items, "cpu")
    monkeypatch.setattr(reuse, "load_crm_run", lambda run_id, ctx, d: source)
    method.crm = method.build(data, text_vectors(data.n_items), None)
    table = method.crm.item_emb.weight.detach().clone()
    method.warm_start(data)
    assert torch.equal(method.crm.pos_emb.weight, source.pos_emb.weight)
    assert torch.equal(method.crm.item_emb.weight, table)


def test_bad_mode_and_pop_are_config_errors():
    with pytest.raises(ConfigError, match="method.mode=both"):
        make("llm_encoder", ["method.mode=both"])
    with pytest.raises(ConfigError, match="crm=sasrec or crm=bpr"):
        make("llm_encoder", ["crm=pop"])


def test_embeddings_are_cached_and_a_hit_does_not_load_the_llm(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path))  # a cold cache, whatever ran before
    params: list = []
    first, data = make("llm_encoder", ["method.batch_size=7"], params)
    a = first.item_profiles(data)
    assert first.loaded is not None and first.scorer.stats["tokens"] > 0
    assert a.shape == (data.n_items + 1, 32) and np.all(a[0] == 0)
    second, _ = make("llm_encoder", [], params)
    b = second.item_profiles(data)
    assert second.loaded is None  # nothing to compute: the backbone was never loaded
    np.testing.assert_array_equal(a, b)
    cache = [p["llm_encoder.item_embedding_cache"] for p in params if "llm_encoder.item_embedding_cache" in p]
    assert cache == ["miss", "hit"]




def test_batched_generation_equals_one_by_one_greedy():
    model, tok = tiny_llama()
    model = sharpen(model)
    prompts = ["Introduce the movie \"Toy Story (1995), Animation\" and describe it.", "Yes",
               "A user has watched these movies, most recent last:\n- Fargo\n- Contact\n- Titanic\nAnalyze:",
               "Quantum Widget Gadget Nebula Harbor Crystal Garden Echo River", "Star Wars (1977)"]
    stats = GenerationStats()
    batched = generate(model, tok, prompts, max_new_tokens=10, batch_size=3, stats=stats)
    single = [generate(model, tok, [p], max_new_tokens=10, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) > 1 and all(batched)
    assert stats.prompts == len(prompts) and 0 < stats.new_tokens <= 10 * len(prompts)


def test_generation_cache_resumes_after_a_kill(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path))
    quick = ["method.batch_size=8", "method.max_new_tokens=4"]
    first, data = make("llm_augment", quick)
    first._setup_prompts(data)
    prompts = [first.item_prompt(i) for i in range(1, 31)]
    labels = [f"item:{i}" for i in range(1, 31)]
    full = first.generate(prompts, labels)
    assert first.stats.prompts == len(prompts)
    path = first.cache_path()
    lines = path.read_text().splitlines()
    assert len(lines) == len(prompts)
    # a run killed mid-way: 12 complete lines, then a torn one
    path.write_text("\n".join(lines[:12]) + "\n" + lines[12][:25])
    again, _ = make("llm_augment", quick)
    again._setup_prompts(data)
    assert again.generate(prompts, labels) == full
    assert again.stats.prompts == len(prompts) - 12 and again._cache_hits == 12
    assert len(GenerationCache(path).texts) == len(prompts)
    assert all(line.startswith("{") and line.endswith("}") for line in path.read_text().splitlines())
    # another length (or model, or prompt) does not reuse them
    other, _ = make("llm_augment", ["method.max_new_tokens=5"])
    assert other.cache_path() != path


def test_user_profile_prompts_show_only_training_items():
    method, data = make("llm_augment", ["method.user_profiles=true", "method.max_history=5"])
    method._setup_prompts(data)
    texts = method.prompts.texts
    for u in range(data.n_users):
        shown = method.user_history(u)
        train = data.train_sequence(u)
        assert np.array_equal(shown, train[-5:])
        lines = [ln[2:] for ln in method.user_prompt(u).splitlines() if ln.startswith("- ")]
        assert lines == [texts[int(i)] for i in shown]
        for split in ("valid", "test"):
            target = data.target(u, split)
            if target not in train:
                assert texts[target] not in lines
