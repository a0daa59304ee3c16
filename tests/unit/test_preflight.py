"""Up-front checks: each bad input is one line naming the key and the fix, fast, before any MLflow run."""
from __future__ import annotations

import socket
import time

import pytest
from omegaconf import OmegaConf

from llmrec_cli import preflight
from llmrec_cli.config.compose import compose_run
from llmrec_cli.errors import LlmrecError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_fails_within_seconds_and_says_how_to_use_another_store():
    t0 = time.perf_counter()
    with pytest.raises(LlmrecError, match=r"tracking.uri=http://127.0.0.1:\d+: no MLflow server.*sqlite:///"):
        preflight.check_store(f"http://127.0.0.1:{_closed_port()}")
    assert time.perf_counter() - t0 < preflight.TIMEOUT_SECONDS + 1


def test_unwritable_folders_are_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(LlmrecError, match="output_dir: .*a-file/out is inside a file"):
        preflight.check_writable("output_dir", blocker / "out")
    with pytest.raises(LlmrecError, match="tracking.uri=sqlite:///.*its folder"):
        preflight.check_store(f"sqlite:///{blocker}/sub/mlflow.db")
    preflight.check_writable("output_dir", tmp_path / "new" / "deep")  # created on demand
    assert (tmp_path / "new" / "deep").is_dir()


def _model(**kw):
    base = {"name": "m", "tiny": False, "package_dir": None, "gguf_file": None, "gguf_package": None,
            "name_or_path": None, "weights": "pretrained"}
    return OmegaConf.create({**base, **kw})


def test_model_sources_are_checked_without_loading(tmp_path, monkeypatch):
    preflight.check_model(_model(tiny=True))
    with pytest.raises(LlmrecError, match="model.name_or_path=./nope: no such folder"):
        preflight.check_model(_model(name_or_path="./nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmrecError, match="has no config.json"):
        preflight.check_model(_model(name_or_path=str(tmp_path / "empty")))
    monkeypatch.setattr(preflight, "_hub_cached", lambda repo: False)
    monkeypatch.setattr(preflight, "_reachable", lambda host, port: False)
    with pytest.raises(LlmrecError, match="huggingface.co is unreachable .*huggingface-cli download org/x"):
        preflight.check_model(_model(name_or_path="org/x"))
    with pytest.raises(LlmrecError, match="weights=random still needs the architecture's config.json"):
        preflight.check_model(_model(name_or_path="org/x", weights="random"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LlmrecError, match="HF_HUB_OFFLINE is set"):
        preflight.check_model(_model(name_or_path="org/x"))
    monkeypatch.setattr(preflight, "_hub_cached", lambda repo: True)
    preflight.check_model(_model(name_or_path="org/x"))  # cached: fine offline


def test_a_missing_dataset_sub_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_run(["dataset=ml-100k", "dataset.url=http://127.0.0.1:9/ml-100k.zip"])
    with pytest.raises(LlmrecError, match=f"LLMREC_DATA_DIR={tmp_path} has no ml-100k/ sub-folder"):
        preflight.check_data(cfg.dataset)
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(LlmrecError, match="ml-100k lacks u.item"):
        preflight.check_data(cfg.dataset)


def test_an_llm_method_on_a_dataset_without_item_text_stops_and_says_how_to_add_it(tmp_path, monkeypatch):
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "user-sequence"
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_run(["dataset=user-sequence", f"dataset.path={fixture}", "quadrant=3", "model=tiny-llama"])
    with pytest.raises(LlmrecError, match=r"dataset=user-sequence has no item text.*dataset.items_path="):
        preflight.check_data(cfg.dataset, needs_text=True)
    preflight.check_data(cfg.dataset, needs_text=False)  # a CRM does not need text
    cfg = compose_run(["dataset=user-sequence", f"dataset.path={fixture}", f"dataset.items_path={fixture}/meta.jsonl"])
    preflight.check_data(cfg.dataset, needs_text=True)
