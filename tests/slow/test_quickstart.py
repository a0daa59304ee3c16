"""The README's quickstart, run exactly as written (from the checkout, after `make setup`), within 5 minutes.

The commands come from the README's first ```bash block after "## Quickstart", so a README that drifts from
the code fails here. Two things differ from a newcomer's shell, both only where results land: the MLflow store
and the cache are temporary folders (MLFLOW_TRACKING_URI, LLMREC_CACHE_DIR: a cold cache, as on a fresh
clone), and `llmrec ui` (a server that never exits) is checked with `--help` instead.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_data_or_skip

pytestmark = pytest.mark.slow
BUDGET_SECONDS = 300


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [ln.split("  #", 1)[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_readme_quickstart_runs_as_written_within_five_minutes(tmp_path):
    shared_data_or_skip()
    commands = quickstart_commands()
    assert any(c.startswith("llmrec train") for c in commands), commands
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "LLMREC_CACHE_DIR": str(tmp_path / "cache"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("LLMREC_DATA_DIR", None)  # the quickstart sets it itself
    script = []
    for c in commands:
        if c.startswith("source "):
            continue  # the interpreter running the tests is the venv's
        script.append(f"{c} --help > /dev/null" if c.startswith("llmrec ui") else c)
    t0 = time.perf_counter()
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=BUDGET_SECONDS * 2)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, f"quickstart failed:\n{p.stderr[-3000:]}"
    print(f"quickstart: {len(script)} commands in {seconds:.0f} s")
    assert seconds < BUDGET_SECONDS, f"the quickstart took {seconds:.0f} s (budget {BUDGET_SECONDS} s)"
    assert "llmrec compare" in p.stdout + p.stderr or any("compare" in shlex.split(c)[:2] for c in commands)
