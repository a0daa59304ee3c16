"""Prompts that say what they are: one BOS (a Llama-3 style tokenizer with a BOS and a chat template that
writes it), and over-long prompts fitted by dropping whole demonstrations and oldest history lines, never the
header, the question or the BOS, with the shortening counted."""
from __future__ import annotations

import numpy as np
import pytest

from llmrec_cli.config.compose import compose_run
from llmrec_cli.data.load import load_prepared
from llmrec_cli.llm.prompts import PromptBuilder
from llmrec_cli.llm.tiny import tiny_bos_tokenizer, tiny_tokenizer
from llmrec_cli.llm.tokens import encode_prompts
from llmrec_cli.llm.training import Example, encode


@pytest.fixture(scope="module")
def view():
    return load_prepared(compose_run(["quadrant=baseline", "dataset=synthetic"]).dataset).train_view()


def longest_user(view) -> int:
    return int(np.argmax(view.train_lengths()))


@pytest.mark.parametrize("chat", [True, False])
def test_prompts_start_with_exactly_one_bos_for_scoring_and_training(view, chat):
    tok = tiny_bos_tokenizer()
    builder = PromptBuilder(view, tok, use_chat_template=chat)
    assert builder.chat is chat
    u = longest_user(view)
    seq = view.train_sequence(u)
    for prompt in (builder.pointwise(u, seq[:-1], int(seq[-1])), builder.listwise(u, seq[:-3], seq[-3:]),
                   builder.likelihood(u, seq[:-1], seq[-2:])[0]):
        assert prompt.startswith(tok.bos_token) is chat  # the chat template writes the BOS itself
        ids = encode_prompts(tok, [prompt])[0]
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
        assert ids.count(tok.bos_token_id) == 1
        row = encode([Example(prompt, builder.answer_prefix + "Yes")], tok, 4096)[0]
        assert row.prompt == ids  # training encodes exactly what the Scorer scores


def test_a_tokenizer_without_bos_gets_none(view):
    tok = tiny_tokenizer()
    builder = PromptBuilder(view, tok, use_chat_template=True)
    seq = view.train_sequence(0)
    ids = encode_prompts(tok, [builder.pointwise(0, seq[:-1], int(seq[-1]))])[0]
    assert tok.bos_token_id not in ids


def history_lines(prompt: str) -> list[str]:
    body = prompt.split("most recent last:\n")[-1]
    return [line for line in body.split("\n") if line.startswith("- ")]


@pytest.mark.parametrize("kind", ["pointwise", "listwise", "likelihood"])
def test_over_long_prompts_lose_whole_demos_then_oldest_lines_never_the_header(view, kind):
    tok = tiny_bos_tokenizer()
    u = longest_user(view)
    seq = view.train_sequence(u)
    history, cands = seq[:-3], seq[-3:]
    roomy = PromptBuilder(view, tok, max_history=50, history_tokens=10_000, num_demos=2, seed=0)
    full = {"pointwise": lambda b: b.pointwise(u, history, int(cands[0])),
            "listwise": lambda b: b.listwise(u, history, cands),
            "likelihood": lambda b: b.likelihood(u, history, cands)[0]}[kind]
    whole = full(roomy)
    n_whole = len(encode_prompts(tok, [whole])[0])
    reserve = roomy.candidate_tokens(cands) if kind == "likelihood" else 1
    budget = n_whole - 40  # a bit too long: the demonstrations go first
    tight = PromptBuilder(view, tok, max_history=50, history_tokens=10_000, num_demos=2, seed=0,
                          max_length=budget + reserve)
    fitted = full(tight)
    ids = encode_prompts(tok, [fitted])[0]
    assert len(ids) <= budget
    assert ids[0] == tok.bos_token_id and fitted.startswith(tok.bos_token)  # the header and BOS stay
    assert fitted.split("most recent last:")[0].startswith(whole.split("(Example)")[0].split("A user")[0])
    assert fitted.endswith(whole[-60:])  # the question and the answer cue stay
    assert tight.stats["shortened"] == 1 and tight.stats["dropped_demos"] >= 1
    assert tight.stats["dropped_tokens"] == n_whole - len(ids)

    no_demos = len(encode_prompts(tok, [full(PromptBuilder(view, tok, max_history=50, history_tokens=10_000))])[0])
    limit = no_demos - 30  # even without demonstrations it does not fit: history lines go
    much_tighter = PromptBuilder(view, tok, max_history=50, history_tokens=10_000, num_demos=2, seed=0,
                                 max_length=limit + reserve)
    short = full(much_tighter)
    lines, all_lines = history_lines(short), history_lines(whole)
    assert much_tighter.stats["dropped_demos"] == 2 and much_tighter.stats["dropped_history_lines"] > 0
    assert 1 <= len(lines) < len(all_lines)
    assert lines == all_lines[-len(lines):]  # the most recent whole lines, oldest dropped first
    assert len(encode_prompts(tok, [short])[0]) <= limit
    assert much_tighter.stat_metrics()["prompt/shortened_share"] == 1.0


def test_prompts_that_fit_are_untouched_and_counted(view):
    tok = tiny_bos_tokenizer()
    builder = PromptBuilder(view, tok, max_length=100_000)
    seq = view.train_sequence(0)
    text = builder.listwise(0, seq[:-3], seq[-3:])
    assert text == PromptBuilder(view, tok).listwise(0, seq[:-3], seq[-3:])
    assert builder.stats["prompts"] == 1 and builder.stats["shortened"] == 0
