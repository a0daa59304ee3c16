"""Leakage guards: no user's valid/test item reaches anything trained or prompted on that user's behalf.

For every user u, the held-out items are u's valid and test targets (unless u also has them in training, a
repeat). They must never appear in: CRM training data (SASRec windows, BPR pairs), quadrant-4/1 training
samples and their rendered prompts, few-shot demonstrations, or LLM-generated user profiles.
"""
from __future__ import annotations

import numpy as np
import pytest

from llmrec_cli import registry
from llmrec_cli.config.compose import compose_run
from llmrec_cli.crm.reuse import build_crm
from llmrec_cli.data.load import load_prepared
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


def test_crm_training_data_holds_no_valid_or_test_item(data):
    cfg = compose_run(["quadrant=baseline", "crm=sasrec", *QUICK])
    sasrec = build_crm(cfg.crm, data.n_users, data.n_items, "cpu")
    sasrec.setup(data)
    owners = np.repeat(np.arange(data.n_users), [max(0, (len(data.train_sequence(u)) + sasrec.cfg.max_len - 2)
                                                     // sasrec.cfg.max_len) for u in range(data.n_users)])
    assert len(owners) == len(sasrec._windows)
    for u, window in zip(owners, sasrec._windows, strict=True):
        assert not held_out(data, int(u)) & set(window.tolist())
    users, items = data.train_pairs()
    for u in range(data.n_users):
        assert not held_out(data, u) & set(items[users == u].tolist())


@pytest.mark.parametrize("name", ["tallrec", "listwise_lora"])
def test_tuned_llm_training_samples_and_prompts_hold_no_valid_or_test_item(data, name, tmp_path):
    registry.load_all()
    cfg = compose_run([f"method={name}", "model=tiny-llama-lora", *QUICK])
    ctx = RunContext(cfg=cfg, seed=0, device="cpu", output_dir=tmp_path, progress=False)
    method = registry.METHODS[name].obj(cfg.method, ctx)
    method.data = data
    method.setup_tuned()
    samples = method.training_samples(data, np.random.default_rng(0))
    assert samples
    for sample in samples:
        u = sample[0]
        bad = held_out(data, u)
        items = set(data.train_sequence(u)[: sample[1]].tolist())
        items |= set(np.atleast_1d(sample[2]).tolist())
        assert not bad & items, (name, u)
        example = method.render(sample)
        assert not mentioned(example.prompt + example.answer, data, bad), (name, u)


class TrainingOnly:
    """A view of the data that refuses every access to valid/test items (only training sequences are open)."""

    FORBIDDEN = ("sequence", "history", "target", "targets", "target_ratings", "seq_items", "seq_ratings")

    def __init__(self, data):
        self._data = data

    def __getattr__(self, name):
        if name in self.FORBIDDEN:
            raise AssertionError(f"held-out data accessed through PreparedData.{name}")
        return getattr(self._data, name)


def test_few_shot_demonstrations_read_training_sequences_only(data):
    class Tok:  # a whitespace "tokenizer": the history budget is not what is tested here
        chat_template = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    builder = PromptBuilder(TrainingOnly(data), Tok(), noun="item", num_demos=3, seed=0)
    for u in range(min(data.n_users, 30)):
        for kind in ("pointwise", "likelihood", "listwise"):
            assert builder.demos(u, kind)
