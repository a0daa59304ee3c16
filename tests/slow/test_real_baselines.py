"""Real data (../shared/data): ml-100k preparation and a Pop run through the CLI (make test-slow)."""
from __future__ import annotations

import mlflow
import pytest

from tests.conftest import shared_data_or_skip
from tests.integration.test_cli import llmrec

pytestmark = pytest.mark.slow


def test_ml100k_prepared_counts_and_pop_run(work, monkeypatch):
    path, uri = work
    monkeypatch.setenv("LLMREC_DATA_DIR", str(shared_data_or_skip()))
    p = llmrec("data", "info", "dataset=ml-100k", cwd=path)
    assert "943" in p.stdout and "1,682" in p.stdout and "1,349" in p.stdout and "100,000" in p.stdout
    llmrec("train", "quadrant=baseline", "crm=pop", "dataset=ml-100k", cwd=path)
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert run.status == "FINISHED" and run["tags.n_users"] == "943"
    # Pop on ML-100K, 5-core, chronological leave-one-out, full ranking (measured; deterministic)
    assert run["metrics.test/full/ndcg_10"] == pytest.approx(0.0432, abs=0.001)
