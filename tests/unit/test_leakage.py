"""Leakage guards, by construction: `fit` gets a training-only view, `score` gets the histories.

For every user u, the held-out items are u's valid and test targets. Nothing trained or prompted on u's behalf
may be built from them: CRM training data (SASRec windows, BPR pairs), quadrant-4/1 training samples and their
rendered prompts, few-shot demonstrations, LLM-generated user profiles. The guarantees tested here:
- the view a method fits on cannot reach a held-out target (any attempt raises LeakageError), and the train
  pipeline hands every method that view: a method that tries to read a target during fit fails its run;
- what a method trains on is a function of the training view only: changing every held-out target leaves
  the training samples (negatives included) unchanged.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from llmrec_cli import registry
from llmrec_cli.config.compose import compose_run
from llmrec_cli.crm.reuse import build_crm
from llmrec_cli.data.load import load_prepared
from llmrec_cli.data.views import HELD_OUT, LeakageError, TrainView
from llmrec_cli.llm.prompts import PromptBuilder, item_texts
from llmrec_cli.methods.base import RunContext

QUICK = ["dataset=synthetic", "eval.max_users=12", "trainer.device=cpu", "trainer.progress=false"]


@pytest.fixture(scope="module")
def data():
    return load_prepared(compose_run(["quadrant=baseline", *QUICK]).dataset)


def held_out(data, u: int) -> set[int]:
    """u's valid and test targets that are not also among u's training items."""
    return {data.target(u, "valid"), data.target(u, "test")} - set(data.train_sequence(u).tolist())


def mentioned(text: str, data, items: set[int]) -> set[int]:
    """Which of ITEMS appear as a history/candidate line or a quoted title in TEXT."""
    texts = item_texts(data.items)
    return {i for i in items if f"- {texts[i]}\n" in text + "\n" or f". {texts[i]}\n" in text + "\n"
            or f'"{texts[i]}"' in text}


def other_targets(data, seed: int = 5):
    """DATA with every user's valid and test targets replaced by other items (training prefixes unchanged)."""
    rng = np.random.default_rng(seed)
    seq = data.seq_items.copy()
    for split in ("valid", "test"):
        idx = data.offsets[:-1] + data.positions(split)
        seq[idx] = rng.integers(1, data.n_items + 1, size=len(idx))
    return dataclasses.replace(data, seq_items=seq)


# ---- the view ----------------------------------------------------------------------------------------------

def test_the_training_view_holds_no_held_out_target(data):
    view = data.train_view()
    assert isinstance(view, TrainView)
    for name in HELD_OUT:
        with pytest.raises(LeakageError, match=name):
            getattr(view, name)
    assert not any(isinstance(v, type(data)) for v in vars(view).values())  # no way back to the targets
    for u in range(data.n_users):
        np.testing.assert_array_equal(view.train_sequence(u), data.train_sequence(u))
    np.testing.assert_array_equal(view.train_counts(), data.train_counts())
    for a, b in zip(view.train_pairs(), data.train_pairs(), strict=True):
        np.testing.assert_array_equal(a, b)
    changed = other_targets(data).train_view()
    for u in range(data.n_users):  # the view is the same whatever the held-out targets are
        np.testing.assert_array_equal(changed.train_sequence(u), view.train_sequence(u))


class Peeker:
    """A method that reads a test target while fitting."""

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx = cfg, ctx

    def fit(self, data):
        return {"peeked": float(data.target(0, "test"))}


def test_a_method_reading_a_held_out_target_during_fit_fails_its_run(tmp_path, monkeypatch):
    from llmrec_cli.errors import LlmrecError
    from llmrec_cli.pipelines.train import run_train
    from llmrec_cli.tracking import search_runs

    registry.load_all()
    entry = registry.METHODS["baseline"]
    monkeypatch.setitem(registry.METHODS, "baseline", dataclasses.replace(entry, obj=Peeker))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_run(["quadrant=baseline", "crm=pop", *QUICK, f"tracking.uri={uri}",
                       f"output_dir={tmp_path}/out"])
    with pytest.raises(LeakageError, match="held-out data is not reachable"):
        run_train(cfg)
    assert issubclass(LeakageError, LlmrecError)  # one line, no traceback, exit code 1 in the CLI
    runs = search_runs(uri, None)
    assert runs["status"].tolist() == ["FAILED"] and "LeakageError" in runs["tags.error"].iloc[0]


# ---- what is trained on ------------------------------------------------------------------------------------

def test_crm_training_data_holds_no_valid_or_test_item(data):
    view = data.train_view()
    cfg = compose_run(["quadrant=baseline", "crm=sasrec", *QUICK])
    sasrec = build_crm(cfg.crm, data.n_users, data.n_items, "cpu")
    sasrec.setup(view)
    owners = np.repeat(np.arange(data.n_users), [max(0, (len(data.train_sequence(u)) + sasrec.cfg.max_len - 2)
                                                     // sasrec.cfg.max_len) for u in range(data.n_users)])
    assert len(owners) == len(sasrec._windows)
    for u, window in zip(owners, sasrec._windows, strict=True):
        assert not held_out(data, int(u)) & set(window.tolist())
    users, items = view.train_pairs()
    for u in range(data.n_users):
        assert not held_out(data, u) & set(items[users == u].tolist())


def tuned(name, data, tmp_path):
    registry.load_all()
    cfg = compose_run([f"method={name}", "model=tiny-llama-lora", *QUICK])
    ctx = RunContext(cfg=cfg, seed=0, device="cpu", output_dir=tmp_path, progress=False)
    method = registry.METHODS[name].obj(cfg.method, ctx)
    method.data = data.train_view()
    method.setup_tuned()
    return method


@pytest.mark.parametrize("name", ["tallrec", "listwise_lora"])
def test_tuned_llm_training_samples_and_prompts_show_no_valid_or_test_item(data, name, tmp_path):
    method = tuned(name, data, tmp_path)
    samples = method.training_samples(method.data, np.random.default_rng(0))
    assert samples
    for sample in samples:
        u = sample.user
        bad = held_out(data, u)
        shown = set(sample.history.tolist())
        assert shown <= set(data.train_sequence(u).tolist()) | {0}
        assert not bad & shown, (name, u)
        example = method.render(sample)
        history = example.prompt.split("most recent last:\n", 1)[1].split("\n\n", 1)[0]
        assert not mentioned(history.split("\nWill the user")[0].split("\nCandidates:")[0], data, bad), (name, u)


@pytest.mark.parametrize("name", ["tallrec", "listwise_lora"])
def test_tuned_llm_training_samples_do_not_depend_on_held_out_targets(data, name, tmp_path):
    """Training negatives come from the training view (as BPR's): the samples, negatives included, are the
    same whatever the held-out valid/test targets are, so the training distribution carries no test label."""
    a = tuned(name, data, tmp_path)
    b = tuned(name, other_targets(data), tmp_path)
    sa = a.training_samples(a.data, np.random.default_rng(0))
    sb = b.training_samples(b.data, np.random.default_rng(0))
    assert len(sa) == len(sb)
    for x, y in zip(sa, sb, strict=True):
        assert (x.task, x.user, x.answer) == (y.task, y.user, y.answer), (name, x, y)
        assert np.array_equal(x.history, y.history) and np.array_equal(x.items, y.items), (name, x, y)


def test_few_shot_demonstrations_read_the_training_view_only(data):
    class Tok:  # a whitespace "tokenizer": the history budget is not what is tested here
        chat_template = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    builder = PromptBuilder(data.train_view(), Tok(), noun="item", num_demos=3, seed=0)
    for u in range(min(data.n_users, 30)):
        for kind in ("pointwise", "likelihood", "listwise"):
            demos = builder.demos(u, kind)
            assert demos
            others = {v for v in range(data.n_users) if v != u}
            assert not mentioned(demos, data, set().union(*(held_out(data, v) for v in others))
                                 - set().union(*(set(data.train_sequence(v).tolist()) for v in others)))
