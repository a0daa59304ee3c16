"""Test isolation: every test session gets its own cache folder and MLflow store; no network, no GPU needed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("llmrec-env")
    saved = {k: os.environ.get(k) for k in ("LLMREC_CACHE_DIR", "MLFLOW_TRACKING_URI", "LLMREC_NO_PROGRESS")}
    os.environ["LLMREC_CACHE_DIR"] = str(base / "cache")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{base / 'mlflow.db'}"
    os.environ["LLMREC_NO_PROGRESS"] = "1"
    yield base
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A fresh working directory with its own MLflow store; returns (path, tracking uri)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, uri


def shared_data_or_skip() -> Path:
    if not (SHARED_DATA / "ml-100k" / "u.data").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
