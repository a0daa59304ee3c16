"""`model.dtype=auto` on a CPU (llm/precision.py) and the LoRA loop's length-grouped batches."""
from __future__ import annotations

import numpy as np
import pytest

from llmrec_cli.llm import precision
from llmrec_cli.llm.training import length_grouped_batches


def test_forced_by_the_environment(monkeypatch):
    monkeypatch.setenv("LLMREC_CPU_BF16", "1")
    assert precision.cpu_bf16_pays(32)[0] is True
    monkeypatch.setenv("LLMREC_CPU_BF16", "0")
    assert precision.cpu_bf16_pays(4096)[0] is False


def test_no_native_bf16_means_fp32_without_timing(monkeypatch):
    monkeypatch.delenv("LLMREC_CPU_BF16", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    monkeypatch.setattr(precision, "matmul_speedup", lambda width: pytest.fail("timed without a bf16 flag"))
    use, why = precision.cpu_bf16_pays(576)
    assert not use and "no native bf16" in why


def test_the_measured_speedup_decides(monkeypatch):
    monkeypatch.delenv("LLMREC_CPU_BF16", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["amx_bf16"])
    monkeypatch.setattr(precision, "matmul_speedup", lambda width: 3.0)
    assert precision.cpu_bf16_pays(576) == (True, "amx_bf16: bf16 matmul 3.00x fp32 (bf16)")
    monkeypatch.setattr(precision, "matmul_speedup", lambda width: 1.1)
    assert precision.cpu_bf16_pays(576)[0] is False
    assert precision.cpu_bf16_pays(64)[0] is False  # tiny test models stay fp32 (exact)


def test_the_probe_measures_something():
    assert precision.matmul_speedup(64, reps=2) > 0


def test_tiny_models_load_in_fp32_with_dtype_auto(monkeypatch):
    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.llm.loading import load_backbone

    monkeypatch.delenv("LLMREC_CPU_BF16", raising=False)
    loaded = load_backbone(compose_run(["quadrant=3", "model=tiny-llama"]).model, "cpu")
    assert loaded.dtype == "float32" and "hidden size" in loaded.dtype_reason
    monkeypatch.setenv("LLMREC_CPU_BF16", "1")
    loaded = load_backbone(compose_run(["quadrant=3", "model=tiny-llama"]).model, "cpu")
    assert loaded.dtype == "bfloat16" and str(next(loaded.model.parameters()).dtype) == "torch.bfloat16"


def test_length_grouped_batches_cover_every_example_once_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 500, size=1000)
    batches = length_grouped_batches(lengths, 8, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000)) and all(len(b) <= 8 for b in batches)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    order = np.random.default_rng(1).permutation(1000)
    naive = sum(8 * lengths[order[s:s + 8]].max() for s in range(0, 1000, 8))
    assert padded < 0.8 * naive
    again = length_grouped_batches(lengths, 8, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_training_loss_reads_the_scorers_logits():
    """One LM-head path: the listwise training loss at the answer position is the cross-entropy of exactly the
    log-softmax Scorer.listwise returns for the same prompt (same fp32 head, same letters)."""
    import torch

    from llmrec_cli.llm.head import LMHead
    from llmrec_cli.llm.scoring import Scorer
    from llmrec_cli.llm.tiny import tiny_llama
    from llmrec_cli.llm.training import Example, _head_fn, answer_loss, collate, encode

    model, tok = tiny_llama(0)
    scorer = Scorer(model, tok, "cpu", batch_size=2)
    letters = ["A", "B", "C"]
    ids = tuple(scorer.verbalizer_ids(letters, prefix=" "))
    prompt = "history: a b c\nCandidates:\nA. x\nB. y\nC. z\nAnswer:"
    scores = scorer.listwise([prompt], [3], labels=letters, prefix=" ")[0]
    head = _head_fn(model)
    assert isinstance(head, LMHead)
    rows = encode([Example(prompt, " B", choices=ids)], tok, 1024)
    batch = collate(rows, int(tok.pad_token_id or 0), "cpu")
    with torch.no_grad():
        loss = answer_loss(model.model, head, *batch)
    assert float(loss) == pytest.approx(-scores[1], abs=1e-5)
