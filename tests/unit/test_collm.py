"""Quadrant 1 `collm` with the tiny LoRA Llama and an untrained SASRec: soft-token ids and vectors, prompts,
leakage of held-out items, training of LoRA + projector (resume, early stopping), save/load, config rules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmrec_cli import registry
from llmrec_cli.config.compose import compose_run
from llmrec_cli.crm.reuse import build_crm
from llmrec_cli.data.load import load_prepared
from llmrec_cli.errors import ConfigError
from llmrec_cli.llm.training import STATE_FILE
from llmrec_cli.methods.base import RunContext
from llmrec_cli.methods.heads import ListwiseHead, PointwiseHead
from llmrec_cli.methods.llm_tuned import TunedLLM
from llmrec_cli.methods.q1_collm import SoftItems
from tests.helpers import crash_then_constant

QUICK = ["method=collm", "model=tiny-llama-lora", "crm=sasrec", "dataset=synthetic", "eval.max_users=12",
         "trainer.device=cpu", "trainer.progress=false", "method.num_samples=24", "eval.monitor=valid/sampled/ndcg_10"]


def make(head: str, out: Path, overrides=(), validate=None, log=None):
    """A collm method with a hand-made context (no MLflow) and an untrained SASRec: (method, training view)."""
    registry.load_all()
    cfg = compose_run([*QUICK, f"method.head={head}", *overrides])
    texts: dict[str, str] = {}
    ctx = RunContext(cfg=cfg, seed=int(cfg.seed), device="cpu", output_dir=out, validate=validate, progress=False,
                     log_metrics=(lambda m, step: log.append((step, m))) if log is not None else (lambda m, s: None),
                     log_params=(lambda p: log.append(("params", p))) if log is not None else (lambda p: None),
                     log_text=lambda text, name: texts.__setitem__(name, text))
    data = load_prepared(cfg.dataset).train_view()
    method = registry.METHODS["collm"].obj(cfg.method, ctx)
    method.texts = texts
    torch.manual_seed(0)  # the same CRM in every run (as the seeded in-line training gives)
    method.crm = build_crm(cfg.crm, data.n_users, data.n_items, "cpu")
    method.crm.setup(data)
    return method, data


def full_data():
    """The prepared data with its held-out targets (what the evaluator holds)."""
    return load_prepared(compose_run(QUICK).dataset)


def ready(head: str, out: Path, overrides=()):
    """A method set up for scoring (CRM, LLM, projector) without training."""
    method, data = make(head, out, overrides)
    method.data = data
    method.setup_tuned()
    method.log_prompting()
    return method, data


def projector(method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.soft.projector.state_dict().items()}


def lora_b(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


def soft_items(method, ids) -> tuple[list[int], list[tuple[int, int]]]:
    """(item indices, (user, history length) pairs) of a prompt's soft tokens, in order."""
    decoded = [method.soft.decode(t) for t in ids if t >= method.soft.vocab]
    users = [method.soft.slot_history(a) for kind, a in decoded if kind == "user"]
    return [a for kind, a in decoded if kind == "item"], [(u, len(h)) for u, h in users]


def test_the_head_picks_the_recipes_parts_and_quadrant_1_defaults_to_collm(tmp_path):
    method, _ = make("pointwise", tmp_path)
    assert isinstance(method, TunedLLM) and isinstance(method.head, PointwiseHead) and method.score_kind == "logit"
    assert isinstance(method.items, SoftItems)
    method, _ = make("listwise", tmp_path)
    assert isinstance(method.head, ListwiseHead) and method.score_kind == "score" and not method.supports_full
    assert method.order_sensitive
    assert compose_run(["quadrant=1", "model=tiny-llama-lora", "crm=sasrec"]).method.name == "collm"


def test_soft_ids_map_to_crm_vectors_and_never_reach_the_embedding_layer(tmp_path):
    method, data = ready("pointwise", tmp_path)
    soft, crm = method.soft, method.crm
    assert soft.vocab == method.loaded.model.get_input_embeddings().num_embeddings
    u, history = 3, data.train_sequence(3)[:-1]
    slot = soft.user_slot(u, history)
    assert soft.user_slot(u, history.copy()) == slot and soft.user_slot(u, history[:-1]) != slot
    ids = torch.tensor([[5, soft.item_id(7), 9, soft.user_id(slot), soft.item_id(data.n_items)]])
    assert soft.decode(soft.item_id(7)) == ("item", 7) and soft.decode(soft.user_id(slot)) == ("user", slot)
    with torch.no_grad():
        vecs = soft.vectors(ids[ids >= soft.vocab] - soft.vocab)
        torch.testing.assert_close(vecs[0], crm.item_embeddings()[7])
        torch.testing.assert_close(vecs[1], crm.user_embeddings(np.array([u]), [history])[0])
        torch.testing.assert_close(vecs[2], crm.item_embeddings()[data.n_items])
        seen = []
        hook = soft.embeddings.register_forward_pre_hook(lambda mod, args: seen.append(int(args[0].max())))
        out = soft(ids)
        hook.remove()
        emb = soft.embeddings(torch.tensor([5, 9]))
        torch.testing.assert_close(out[0, [0, 2]], emb)
        torch.testing.assert_close(out[0, 1], soft.projector(crm.item_embeddings()[7]))
    assert seen and max(seen) < soft.vocab


@pytest.mark.parametrize("head", ["pointwise", "listwise"])
def test_prompts_carry_one_soft_token_per_item_and_show_placeholders(tmp_path, head):
    method, _ = ready(head, tmp_path)
    data = full_data()
    history = data.history(0, "test")
    cands = data.sequence(0)[-3:]
    fields = {"candidate": method.prompts.texts[int(cands[0])]} if head == "pointwise" else \
        {"candidates": method.prompts.candidate_block(cands)}
    ids = method.make_prompt(0, history, **fields)
    items, users = soft_items(method, ids)
    n_cands = 1 if head == "pointwise" else 3
    shown = len(items) - n_cands  # the last max_history items, fewer when the prompt had to fit max_length
    assert 1 <= shown <= min(len(history), int(method.cfg.max_history))
    assert shown == min(len(history), int(method.cfg.max_history)) or method.prompts.stats["shortened"] > 0
    assert items == [*history[-shown:].tolist(), *cands[:n_cands].tolist()]
    assert users == [(0, len(history))]
    assert ids == method.make_prompt(0, history, **fields)  # deterministic: training and scoring agree
    text = method.show(ids)
    assert text.count("[item-emb]") == shown + n_cands and text.count("[user-emb]") == 1 and "[[" not in text
    assert "[item-emb]" in method.texts["prompts/example.txt"]
    assert "prompts/soft_tokens.txt" in method.texts
    no_user, _ = ready(head, tmp_path, ["method.use_user_embedding=false"])
    assert soft_items(no_user, no_user.make_prompt(0, history, **fields))[1] == []


@pytest.mark.parametrize("head", ["pointwise", "listwise"])
def test_training_prompts_never_show_held_out_items(tmp_path, head):
    method, view = ready(head, tmp_path)
    data = full_data()
    samples = method.training_samples(view, np.random.default_rng(0))
    assert samples
    for sample in samples:
        u, n_history = sample.user, len(sample.history)
        train = data.train_sequence(u)
        held_out = {data.target(u, "valid"), data.target(u, "test")} - set(train.tolist())
        example = method.render(sample)
        items, users = soft_items(method, example.prompt)
        assert users == [(u, n_history)] and n_history <= len(train) - 1  # the user vector sees the shown prefix
        n_cands = len(sample.items)
        history, cands = items[:-n_cands], items[-n_cands:]
        assert history == train[:n_history][-len(history):].tolist()  # the training prefix, never later items
        if head == "pointwise":
            positive = cands[0] if example.answer.strip() == "Yes" else None
            negatives = [] if positive is not None else cands
        else:
            positive = cands[sample.answer]
            negatives = [c for k, c in enumerate(cands) if k != sample.answer]
        assert positive is None or positive == int(train[-1])
        assert not set(negatives) & set(train.tolist())  # negatives from the training view (as BPR's)
        assert not held_out & set(history + ([positive] if positive is not None else []))  # shown/positive


def test_fit_moves_lora_and_projector_but_not_the_frozen_crm(tmp_path):
    fresh, _ = ready("pointwise", tmp_path / "init")
    init = projector(fresh)
    method, data = make("pointwise", tmp_path / "run", ["method.max_epochs=2"])
    crm_before = {k: v.clone() for k, v in method.crm.state_dict().items()}
    summary = method.fit(data)
    assert summary["epochs"] == 2 and summary["examples"] == 24
    assert all(float(t.abs().sum()) > 0 for t in lora_b(method.loaded.model).values())
    after = projector(method)
    assert any(not torch.equal(init[k], after[k]) for k in init)
    for k, v in method.crm.state_dict().items():
        torch.testing.assert_close(v, crm_before[k])
    assert not any(p.requires_grad for p in method.crm.parameters())
    assert "[item-emb]" in method.texts["prompts/train_example.txt"]


def test_crm_trainable_tunes_the_crm_jointly(tmp_path):
    method, data = make("listwise", tmp_path, ["method.max_epochs=1", "crm.trainable=true", "model.max_length=1024"])
    before = {n: p.detach().clone() for n, p in method.crm.named_parameters()}
    method.fit(data)
    assert method.soft.cache is None  # vectors computed in the graph at every step
    after = dict(method.crm.named_parameters())
    assert not torch.equal(before["item_emb.weight"], after["item_emb.weight"].detach())
    # the user soft token flows back into SASRec's transformer too, not only its item table
    moved = [n for n in before if n.startswith("encoder.") and not torch.equal(before[n], after[n].detach())]
    assert moved


@pytest.mark.parametrize("head", ["pointwise", "listwise"])
def test_save_then_load_gives_identical_scores(tmp_path, head):
    method, data = make(head, tmp_path / "run", ["method.max_epochs=1"])
    method.fit(data)
    users = np.arange(4)
    full = full_data()
    items = np.stack([full.sequence(int(u))[-6:] for u in users])
    hist = [full.history(int(u), "test") for u in users]
    before = method.score(users, hist, items)
    files = {f.name for f in method.save(tmp_path / "ckpt")}
    assert {"adapter_model.safetensors", "projector.pt", "crm.pt"} <= files
    again, _ = make(head, tmp_path / "run2")
    again.crm = None  # load reads crm.pt
    again.load(tmp_path / "ckpt", data)
    np.testing.assert_array_equal(again.score(users, hist, items), before)
    # The CRM vectors matter: a different CRM changes the scores.
    with torch.no_grad():
        again.crm.item_emb.weight.mul_(-1.0)
    again.soft.reset()
    assert not np.array_equal(again.score(users, hist, items), before)


def test_resume_restores_the_projector(tmp_path):
    crash_at_epoch_2, constant = crash_then_constant()

    two = ["method.max_epochs=2", "trainer.max_epochs=2", "trainer.patience=5"]
    first, data = make("pointwise", tmp_path / "outputs" / "a", two, validate=crash_at_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit(data)
    state = torch.load(tmp_path / "outputs" / "a" / "checkpoints" / "last" / STATE_FILE, weights_only=False)
    assert state["epoch"] == 1 and len(state["extra"]) == len(list(first.soft.projector.parameters()))

    resumed, _ = make("pointwise", tmp_path / "outputs" / "b", [*two, "resume=true"], validate=constant)
    summary = resumed.fit(data)
    assert summary["start_epoch"] == 2

    fresh, _ = make("pointwise", tmp_path / "outputs" / "c", two, validate=constant)
    fresh.fit(data)
    for k, v in projector(fresh).items():
        torch.testing.assert_close(projector(resumed)[k], v)
    resumed_lora = lora_b(resumed.loaded.model)
    for k, v in lora_b(fresh.loaded.model).items():
        torch.testing.assert_close(resumed_lora[k], v)


def test_early_stopping_restores_the_best_projector(tmp_path):
    values = iter([0.5, 0.4, 0.3])
    snapshots = []

    def validate(method):
        snapshots.append(projector(method))
        return {"valid/sampled/ndcg_10": next(values)}

    method, data = make("listwise", tmp_path / "run", ["method.max_epochs=3", "trainer.max_epochs=3",
                                                       "trainer.patience=1"], validate=validate)
    summary = method.fit(data)
    assert (summary["epochs"], summary["best_epoch"]) == (2, 1)
    assert any(not torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0])
    for k, v in projector(method).items():
        torch.testing.assert_close(v, snapshots[0][k])


def test_config_rules(tmp_path):
    with pytest.raises(ConfigError, match="method.head"):
        compose_run([*QUICK, "method.head=pairwise"])
    with pytest.raises(ConfigError, match="eval.num_negatives<=25"):
        compose_run([*QUICK, "method.head=listwise", "eval.num_negatives=30"])
    with pytest.raises(ConfigError, match="crm=sasrec or crm=bpr"):
        compose_run([*QUICK, "crm=pop"])
    method, data = make("pointwise", tmp_path, ["method.projector_hidden=-1"])
    with pytest.raises(ConfigError, match="method.projector_hidden"):
        method.fit(data)
