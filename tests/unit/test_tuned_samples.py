"""Training samples of the tuned LLM methods (llmrec_cli/methods/samples.py): sliding-window targets, the prompt
budget, CRM hard negatives, the mim / bpr auxiliary tasks; each read from the training view only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrec_cli import registry
from llmrec_cli.config.compose import compose_run
from llmrec_cli.data.load import load_prepared
from llmrec_cli.errors import ConfigError
from llmrec_cli.llm.prompts import HIDDEN
from llmrec_cli.methods.base import RunContext
from llmrec_cli.methods.samples import CrmNegatives, Target, aux_samples, training_targets
from tests.unit.test_leakage import held_out, other_targets

QUICK = ["dataset=synthetic", "eval.max_users=12", "trainer.device=cpu", "trainer.progress=false"]


@pytest.fixture(scope="module")
def data():
    return load_prepared(compose_run(["quadrant=baseline", *QUICK]).dataset)


def tuned(name, view, tmp_path, extra=()):
    registry.load_all()
    cfg = compose_run([f"method={name}", "model=tiny-llama-lora", *QUICK, *extra])
    ctx = RunContext(cfg=cfg, seed=0, device="cpu", output_dir=tmp_path, progress=False)
    method = registry.METHODS[name].obj(cfg.method, ctx)
    method.data = view
    method.setup_tuned()
    return method


class PopularFirst:
    """A stand-in CRM: item i scores -i whatever the history (item 1 is the most 'popular')."""

    def __init__(self, n_items):
        self.n_items = n_items

    def score(self, users, histories, items):
        return -torch.arange(self.n_items + 1, dtype=torch.float32).repeat(len(users), 1)


def test_targets_are_the_last_positions_or_every_position(data):
    view = data.train_view()
    lengths = [len(view.train_sequence(u)) for u in range(view.n_users)]
    last = training_targets(view, 1)
    assert [(t.user, t.pos) for t in last] == [(u, n - 1) for u, n in enumerate(lengths) if n >= 2]
    every = training_targets(view, 0)
    assert len(every) == sum(n - 1 for n in lengths if n >= 2)
    assert {t.pos for t in every if t.user == 0} == set(range(1, lengths[0]))
    two = training_targets(view, 2)
    assert len(two) == sum(min(2, n - 1) for n in lengths if n >= 2)


@pytest.mark.parametrize("name,budget", [("listwise_lora", 7), ("tallrec", 7), ("tallrec", 8)])
def test_the_budget_counts_prompts_and_is_seeded(data, name, budget, tmp_path):
    method = tuned(name, data.train_view(), tmp_path, [f"method.num_samples={budget}", "method.samples_per_user=0"])
    a = method.training_samples(method.data, np.random.default_rng(0))
    b = method.training_samples(method.data, np.random.default_rng(0))
    assert len(a) == budget
    assert [(s.user, len(s.history), s.items.tolist()) for s in a] == [(s.user, len(s.history), s.items.tolist())
                                                                       for s in b]


def test_windows_show_only_the_prefix_before_each_target(data, tmp_path):
    view = data.train_view()
    method = tuned("listwise_lora", view, tmp_path, ["method.samples_per_user=0"])
    samples = method.training_samples(view, np.random.default_rng(0))
    assert len(samples) == len(training_targets(view, 0))
    for s in samples:
        seq = view.train_sequence(s.user)
        target = int(s.items[s.answer])
        assert np.array_equal(s.history, seq[: len(s.history)]) and target == int(seq[len(s.history)])
        assert not set(s.items.tolist()) - {target} & set(seq.tolist())  # negatives outside the training sequence


def test_crm_negatives_are_the_crms_top_unseen_items_and_ignore_held_out_targets(data):
    view = data.train_view()
    targets = training_targets(view, 0)[:40]
    negs = CrmNegatives(view, PopularFirst(view.n_items))(targets, 5)
    for t, neg in zip(targets, negs, strict=True):
        seen = set(view.train_sequence(t.user).tolist())
        assert neg == [i for i in range(1, view.n_items + 1) if i not in seen][:5]
    other = other_targets(data).train_view()
    assert CrmNegatives(other, PopularFirst(view.n_items))(targets, 5) == negs


def test_train_negatives_crm_without_a_crm_says_how_to_get_one(data, tmp_path):
    method = tuned("listwise_lora", data.train_view(), tmp_path, ["method.train_negatives=crm"])
    with pytest.raises(ConfigError, match="candidates=crm_topk"):
        method.training_samples(method.data, np.random.default_rng(0))


def test_listwise_training_with_crm_negatives_uses_the_prefilter(data, tmp_path):
    method = tuned("listwise_lora", data.train_view(), tmp_path, ["method.train_negatives=crm"])
    method.prefilter = PopularFirst(data.n_items)
    samples = method.training_samples(method.data, np.random.default_rng(0))
    for s in samples:
        seen = set(method.data.train_sequence(s.user).tolist())
        negatives = [int(i) for k, i in enumerate(s.items) if k != s.answer]
        assert sorted(negatives) == [i for i in range(1, data.n_items + 1) if i not in seen][: len(negatives)]


def test_aux_tasks_mim_and_bpr(data, tmp_path):
    view = data.train_view()
    targets = training_targets(view, 0)
    aux = aux_samples(view, targets, ["mim", "bpr"], 0.5, 20, 6, np.random.default_rng(0), 10)
    assert [s.task for s in aux].count("mim") == 5 and [s.task for s in aux].count("bpr") == 5
    for s in aux:
        seq = view.train_sequence(s.user)
        answer = int(s.items[s.answer])
        if s.task == "mim":
            assert (s.history == 0).sum() == 1 and len(s.items) == 6
            hidden = int(np.flatnonzero(s.history == 0)[0])
            shown = s.history.copy()
            shown[hidden] = answer
            assert any(np.array_equal(shown, seq[e - len(shown):e]) for e in range(len(shown), len(seq) + 1))
        else:
            assert len(s.items) == 2 and answer in set(seq.tolist())
            assert int(seq[len(s.history)]) == answer and np.array_equal(s.history, seq[: len(s.history)])
        assert not held_out(data, s.user) & set(s.history.tolist())
    method = tuned("tallrec", view, tmp_path, ["method.aux_tasks=[mim,bpr]", "method.aux_ratio=1.0", "model.max_length=2048"])
    samples = method.training_samples(view, np.random.default_rng(0))
    main = [s for s in samples if s.task == "next"]
    assert len(samples) == 2 * len(main)
    mim = method.render(next(s for s in samples if s.task == "mim"))
    assert f"- {HIDDEN}" in mim.prompt and "hidden" in mim.prompt and mim.choices and len(mim.choices) == 20
    bpr = method.render(next(s for s in samples if s.task == "bpr"))
    assert "B. " in bpr.prompt and "C. " not in bpr.prompt and len(bpr.choices) == 2


@pytest.mark.parametrize("override,message", [("method.samples_per_user=-1", "samples_per_user"),
                                              ("method.train_negatives=hard", "train_negatives"),
                                              ("method.aux_tasks=[cloze]", "aux_tasks")])
def test_bad_sample_settings_are_one_line_config_errors(data, tmp_path, override, message):
    method = tuned("listwise_lora", data.train_view(), tmp_path, [override])
    with pytest.raises(ConfigError, match=message):
        method.check_config()


def test_item_text_title_drops_the_genres(data, tmp_path):
    full = tuned("listwise_lora", data.train_view(), tmp_path)
    short = tuned("listwise_lora", data.train_view(), tmp_path, ["method.item_text=title"])
    assert all(s in f for s, f in zip(short.prompts.texts[1:], full.prompts.texts[1:], strict=True))
    assert sum(map(len, short.prompts.texts)) < sum(map(len, full.prompts.texts))


def test_target_dataclass_is_hashable():
    assert len({Target(0, 1), Target(0, 1)}) == 1
