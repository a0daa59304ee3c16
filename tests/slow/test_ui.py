"""Browser check of `llmrec ui`: a finished run's page renders its name and metrics in headless Chromium.

Needs Debian's Chromium (`make browser`); skipped without it. No Python/npm browser packages: Chromium's own
headless `--dump-dom` and `--screenshot` modes drive the MLflow single-page app. The screenshot is kept as a
test artifact in test-artifacts/mlflow-ui-run.png (git-ignored) and in pytest's tmp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT
from tests.integration.test_cli import llmrec

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
)
ARTIFACT = ROOT / "test-artifacts" / "mlflow-ui-run.png"
RUN_NAME = "ui-check"
METRIC = "test/sampled/ndcg_10"
# Flags for a closed network: without the background-networking ones Chromium's start-up fetches fail the load.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llmrec ui exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"llmrec ui did not answer {url} within {timeout:.0f}s:\n{log.read_text()}")


def _chromium(tmp: Path, name: str, *args: str, budget_ms: int) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp / ('profile-' + name)}",
        f"--virtual-time-budget={budget_ms}",
        *args,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp)}
    )


def _visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make browser)")
def test_ui_shows_finished_run_with_metrics(work, tmp_path_factory):
    path, uri = work
    llmrec(
        "train",
        "quadrant=baseline",
        "crm=pop",
        "dataset=synthetic",
        "seed=0",
        f"run_name={RUN_NAME}",
        cwd=path,
    )
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("llmrec")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == RUN_NAME
    value = run.data.metrics[METRIC]

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
    tmp = tmp_path_factory.mktemp("chromium")
    log = tmp / "ui.log"
    exe = Path(sys.executable).with_name("llmrec")
    with open(log, "w") as fh:
        # own session: `mlflow ui` forks uvicorn workers and a job runner; the whole group is ended below
        proc = subprocess.Popen(
            [str(exe), "ui", "--port", str(port), "--tracking-uri", uri],
            cwd=path,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_http(f"{base}/health", proc, log)

        # The SPA fetches the run over the REST API after load: retry with a longer virtual-time budget if needed.
        text = ""
        for attempt, budget in enumerate((15_000, 30_000, 60_000)):
            p = _chromium(tmp, f"dom{attempt}", "--dump-dom", url, budget_ms=budget)
            text = _visible_text(p.stdout)
            if RUN_NAME in text and METRIC in text:
                break
        else:
            pytest.fail(
                f"run page did not render {RUN_NAME!r}/{METRIC!r}; chromium stderr:\n{p.stderr[-3000:]}\n"
                f"text: {text[:3000]}\nui log:\n{log.read_text()[-3000:]}"
            )
        assert run.info.run_id in text
        # the metrics table row: name, then its value as logged (JS and Python print the shortest round-trip form)
        assert re.search(re.escape(METRIC) + r"\s+" + re.escape(repr(value)), text), text[:3000]

        shot = tmp_path_factory.getbasetemp() / "mlflow-ui-run.png"
        p = _chromium(tmp, "shot", f"--screenshot={shot}", "--window-size=1600,2000", url, budget_ms=15_000)
        assert shot.is_file(), p.stderr[-3000:]
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, len(png)
        ARTIFACT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, ARTIFACT)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
