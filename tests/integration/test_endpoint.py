"""The OpenAI-compatible endpoint client against a real server: `transformers serve` on 127.0.0.1 serving the
tiny random Llama (saved to a folder), not a mock. Unreachable servers, unknown models, missing keys, the
response cache (rerun = no requests; a torn line from a kill is asked again)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from llmrec_cli.llm.endpoint import Endpoint, EndpointError, ResponseCache
from tests.serving import transformers_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base_url, model name): `transformers serve` with the tiny random Llama, stopped after the module."""
    from llmrec_cli.llm.tiny import tiny_bos_tokenizer, tiny_llama

    folder = tmp_path_factory.mktemp("tiny-served")
    model, _ = tiny_llama()
    model.save_pretrained(folder)
    tiny_bos_tokenizer().save_pretrained(folder)
    with transformers_serve(folder, folder / "serve.log") as base_url:
        yield base_url, str(folder)


def endpoint(base_url, name, tmp_path, **over):
    cfg = OmegaConf.create({"base_url": base_url, "name": name, "api_key_env": None, "timeout": 30,
                            "max_concurrency": 2, "max_retries": 1, "backoff_seconds": 0.1, "max_tokens": 4, **over})
    return Endpoint(cfg, cache_root=tmp_path / "cache")


def test_a_served_model_answers_and_a_rerun_comes_from_the_cache(server, tmp_path):
    base_url, name = server
    ep = endpoint(base_url, name, tmp_path)
    assert name in ep.check()["served"]
    talks = [[{"role": "user", "content": f"Say a number: {i}"}] for i in range(3)]
    first = ep.chat(talks)
    assert len(first) == 3 and ep.stats.requests == 3 and ep.stats.cache_hits == 0
    assert all(a["model"] and a["prompt_tokens"] > 0 and a["latency_s"] > 0 for a in first)
    again = endpoint(base_url, name, tmp_path)  # a fresh process reading the same cache
    second = again.chat(talks)
    assert [a["text"] for a in second] == [a["text"] for a in first]
    assert again.stats.requests == 0 and again.stats.cache_hits == 3
    assert again.stats.metrics()["endpoint/cache_hit_rate"] == 1.0


def test_an_unknown_model_is_one_line_naming_what_is_served(server, tmp_path):
    base_url, name = server
    with pytest.raises(EndpointError, match=r"model.name=no/such-model is not served by .* \(it serves: "):
        endpoint(base_url, "no/such-model", tmp_path).check()


def test_an_unreachable_server_fails_fast_with_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(EndpointError, match=rf"model.base_url=http://127.0.0.1:{port}/v1: no server answered"):
        endpoint(f"http://127.0.0.1:{port}/v1", "m", tmp_path).check()
    assert time.perf_counter() - t0 < 10


def test_a_missing_api_key_variable_is_named_and_the_key_never_stored(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMREC_TEST_KEY", raising=False)
    with pytest.raises(EndpointError, match="model.api_key_env=LLMREC_TEST_KEY: the environment variable"):
        endpoint("http://127.0.0.1:9/v1", "m", tmp_path, api_key_env="LLMREC_TEST_KEY")
    monkeypatch.setenv("LLMREC_TEST_KEY", "sk-secret-123")
    ep = endpoint("http://127.0.0.1:9/v1", "m", tmp_path, api_key_env="LLMREC_TEST_KEY")
    assert ep.api_key == "sk-secret-123"


def test_a_torn_cache_line_is_asked_again_and_whole_lines_stay(tmp_path):
    cache = ResponseCache(tmp_path / "c.jsonl")
    cache.put("a", {"text": "A"})
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "b", "answer": {"te')  # killed mid-write
    again = ResponseCache(tmp_path / "c.jsonl")
    assert again.get("a") == {"text": "A"} and again.get("b") is None and again.torn == 1
    again.put("b", {"text": "B"})
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"key": "b", "answer": {"text": "B"}}
    assert ResponseCache(tmp_path / "c.jsonl").get("b") == {"text": "B"}


# ---- whole runs through the served model ----------------------------------------------------------------------

def run_config(server, tmp_path, *over):
    from llmrec_cli.config.compose import compose_run

    base_url, name = server
    return compose_run(["quadrant=3", "model=endpoint", f"model.base_url={base_url}", f"model.name={name}",
                        "dataset=synthetic", "eval.max_users=6",
                        "eval.protocols=[sampled]", "eval.num_negatives=4", "trainer.device=cpu",
                        "trainer.progress=false", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                        f"output_dir={tmp_path}/out", *over])


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_generate_through_the_endpoint_logs_validity_and_a_rerun_is_free_and_identical(server, isolated_cache):
    import mlflow

    from llmrec_cli.pipelines.train import run_train

    tmp_path = isolated_cache
    cfg = run_config(server, tmp_path, "method.scoring=generate", "method.max_new_tokens=8")
    first = run_train(cfg)
    m = first.metrics
    assert 0.0 <= m["test/sampled/ndcg_10"] <= 1.0
    assert m["endpoint/requests"] > 0 and m["endpoint/cache_hit_rate"] == 0.0 and m["endpoint/prompt_tokens"] > 0
    for key in ("valid_answer_rate", "duplicate_rate", "out_of_candidates_rate", "mean_candidates_ranked"):
        assert 0.0 <= m[f"answers/{key}"], key
    run = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri).get_run(first.run_id)
    assert run.data.params["endpoint.model"] == server[1] and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["endpoint.served_model"] == server[1] and tags["endpoint.answers_from"] <= tags["endpoint.answers_to"]
    sample = json.loads(mlflow.artifacts.load_text(f"runs:/{first.run_id}/answers/samples.jsonl").splitlines()[0])
    assert sample["prompt"] and "answer" in sample and sample["parsed_order"] is not None
    second = run_train(run_config(server, tmp_path, "method.scoring=generate", "method.max_new_tokens=8",
                                  "run_name=again"))
    assert second.metrics["endpoint/requests"] == 0 and second.metrics["endpoint/cache_hit_rate"] == 1.0
    for key, value in m.items():
        if key.startswith(("test/", "valid/", "answers/")):
            assert second.metrics[key] == value, key


def test_a_logprob_mode_on_a_server_without_logprobs_names_the_limitation(server, isolated_cache):
    from llmrec_cli.pipelines.train import run_train

    with pytest.raises(EndpointError, match="returned no logprobs .* use method.scoring=generate"):
        run_train(run_config(server, isolated_cache, "method.scoring=listwise"))


def test_endpoint_is_only_for_methods_that_need_text_in_and_out():
    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="model=endpoint serves only method=zero_shot"):
        compose_run(["method=llm_encoder", "model=endpoint", "model.name=m"])


def test_a_killed_run_resumes_from_the_cache(server, isolated_cache):
    """SIGKILL a `llmrec train` mid-scoring; the rerun asks only what the killed run had not cached."""
    import os
    import signal

    from llmrec_cli.pipelines.train import run_train

    tmp_path = isolated_cache
    base_url, name = server
    over = ["method.scoring=generate", "method.max_new_tokens=8", "model.max_concurrency=1", "eval.max_users=40"]
    cmd = [sys.executable, "-m", "llmrec_cli", "train", "quadrant=3", "model=endpoint", f"model.base_url={base_url}",
           f"model.name={name}", "dataset=synthetic", "eval.protocols=[sampled]", "eval.num_negatives=4",
           "trainer.device=cpu", "trainer.progress=false", f"tracking.uri=sqlite:///{tmp_path}/m.db",
           f"output_dir={tmp_path}/out", *over]
    proc = subprocess.Popen(cmd, env={**os.environ, "LLMREC_CACHE_DIR": str(tmp_path / "cache")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    cached = 0
    while time.time() < deadline and proc.poll() is None:
        files = list((tmp_path / "cache" / "endpoint").glob("*.jsonl"))
        cached = sum(1 for _ in open(files[0])) if files else 0
        if cached >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    files = list((tmp_path / "cache" / "endpoint").glob("*.jsonl"))
    kept = len(ResponseCache(files[0]))
    assert kept >= 5
    cfg = run_config(server, tmp_path, *over)
    resumed = run_train(cfg).metrics
    total = resumed["endpoint/requests"] + resumed["endpoint/cache_hits"]
    assert resumed["endpoint/cache_hits"] == kept and resumed["endpoint/requests"] == total - kept


def test_endpoint_without_a_model_name_says_to_set_it():
    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="model=endpoint needs model.name="):
        compose_run(["quadrant=3", "model=endpoint"])


def test_llm_augment_generates_its_profiles_through_the_endpoint(server, isolated_cache):
    """Quadrant 2 on an endpoint: every item profile is one request, encoded by `method.encoder` in-process; a
    rerun asks nothing."""
    import mlflow

    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.pipelines.train import run_train

    tmp_path = isolated_cache
    base_url, name = server
    over = ["method=llm_augment", "model=endpoint", f"model.base_url={base_url}", f"model.name={name}",
            "method.encoder=tiny-llama", "method.max_new_tokens=6", "method.log_samples=2", "crm=bpr",
            "dataset=synthetic", "eval.max_users=6", "eval.protocols=[sampled]", "trainer.max_epochs=1",
            "trainer.device=cpu", "trainer.progress=false", f"tracking.uri=sqlite:///{tmp_path}/m.db",
            f"output_dir={tmp_path}/out"]
    cfg = compose_run(over)
    assert cfg.method.encoder_model.name == "tiny-llama" and cfg.quadrant.id == "2"
    first = run_train(cfg)
    run = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri).get_run(first.run_id)
    n_items = int(run.data.tags["n_items"])
    m = first.metrics
    assert run.info.status == "FINISHED" and run.data.params["endpoint.model"] == name
    assert m["endpoint/requests"] == n_items and m["cost/generated_prompts"] == n_items
    assert m["cost/generated_tokens"] > 0 and 0.0 <= m["test/sampled/ndcg_10"] <= 1.0
    assert run.data.params["encoder.backbone"] == "tiny-llama"
    samples = mlflow.artifacts.load_text(f"runs:/{first.run_id}/augment/samples.txt")
    assert samples.count("### item:") == 2
    again = run_train(compose_run([*over, "run_name=again"])).metrics
    assert again["endpoint/requests"] == 0 and again["cost/generation_cache_hits"] == n_items
    assert again["test/sampled/ndcg_10"] == m["test/sampled/ndcg_10"]


def test_few_shot_demonstrations_reach_the_endpoint_prompt(server, isolated_cache):
    """`method.num_demos` builds the same few-shot block in-process and through an endpoint."""
    import mlflow

    from llmrec_cli.pipelines.train import run_train

    summary = run_train(run_config(server, isolated_cache, "method.scoring=generate", "method.max_new_tokens=4",
                                   "method.num_demos=1", "eval.max_users=2"))
    sample = json.loads(mlflow.artifacts.load_text(f"runs:/{summary.run_id}/answers/samples.jsonl").splitlines()[0])
    assert sample["prompt"].startswith("(Example)")  # the demonstration comes before the user's own question
