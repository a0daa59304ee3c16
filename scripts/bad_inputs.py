"""Bad inputs, tried as a user would: each case runs `llmrec ...` in a fresh folder and store; prints a markdown
table of the exit code, seconds to the error, the line printed and what was left behind (MLflow runs, files
under output_dir).

    python scripts/bad_inputs.py            # needs $LLMREC_DATA_DIR (default ../shared/data) for the ML-100K cases
    python scripts/bad_inputs.py --endpoint http://127.0.0.1:8000/v1   # adds "unknown model" on a live server
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cases(work: Path, endpoint: str | None = None) -> list[tuple[str, list[str], dict[str, str]]]:
    empty = work / "empty-data"
    empty.mkdir()
    partial = work / "partial" / "ml-100k"
    partial.mkdir(parents=True)
    (partial / "u.data").write_text("1\t1\t5\t1\n")
    latin = work / "latin.csv"
    latin.write_bytes("user_id,item_id,timestamp\nzoë,café,1\n".encode("latin-1"))
    blocker = work / "a-file"
    blocker.write_text("x")
    hub = ["method=zero_shot", "model=smollm2", "model.package_dir=null", "model.gguf_file=null",
           "model.gguf_package=null"]
    return [
        ("unknown key", ["train", "trainer.max_epoch=3"], {}),
        ("wrong type", ["train", "seed=abc"], {}),
        ("epochs < 1", ["train", "trainer.max_epochs=0"], {}),
        ("unreachable tracking server", ["train", f"tracking.uri=http://127.0.0.1:{_closed_port()}"], {}),
        ("SQLite store in an unwritable place", ["train", f"tracking.uri=sqlite:///{blocker}/m.db"], {}),
        ("output_dir not writable", ["train", f"output_dir={blocker}/out"], {}),
        ("cache folder not writable", ["train"], {"LLMREC_CACHE_DIR": f"{blocker}/cache"}),
        ("LLMREC_DATA_DIR without ml-100k/", ["train", "dataset.url=http://127.0.0.1:9/x.zip"],
         {"LLMREC_DATA_DIR": str(empty)}),
        ("ml-100k/ without u.item", ["train", "dataset.url=http://127.0.0.1:9/x.zip"],
         {"LLMREC_DATA_DIR": str(partial.parent)}),
        ("CSV in latin-1 read as UTF-8", ["train", "crm=pop", "dataset=csv", f"dataset.path={latin}"], {}),
        ("local model folder missing", ["train", *hub, "model.name_or_path=./no-such-model"], {}),
        ("hub id, no network", ["train", *hub, "model.name_or_path=meta-llama/Llama-3.2-1B-Instruct"], {}),
        ("hub id + weights=random, no network", ["train", *hub, "model.weights=random",
                                                 "model.name_or_path=meta-llama/Llama-3.2-1B-Instruct"], {}),
        ("hub id with HF_HUB_OFFLINE=1", ["train", *hub, "model.name_or_path=Qwen/Qwen2.5-7B-Instruct"],
         {"HF_HUB_OFFLINE": "1"}),
        ("resume=true of a FINISHED run", ["train", "crm=pop", "resume=true"], {}),
        ("endpoint without model.name", ["train", "quadrant=3", "model=endpoint"], {}),
        ("endpoint URL unreachable", ["train", "quadrant=3", "model=endpoint", "model.name=m",
                                      f"model.base_url=http://127.0.0.1:{_closed_port()}/v1"], {}),
        ("endpoint API key variable unset", ["train", "quadrant=3", "model=endpoint", "model.name=gpt-4o-mini",
                                             "model.base_url=https://api.openai.com/v1",
                                             "model.api_key_env=LLMREC_NO_SUCH_KEY"], {}),
        ("endpoint for a method that needs weights", ["train", "method=llm_encoder", "model=endpoint",
                                                      "model.name=m"], {}),
        *([("endpoint model unknown", ["train", "quadrant=3", "model=endpoint", "model.name=no/such-model",
                                       f"model.base_url={endpoint}"], {})] if endpoint else []),
    ]


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", help="a live OpenAI-compatible /v1 URL, for the unknown-model case")
    args = ap.parse_args()
    data = Path(os.environ.get("LLMREC_DATA_DIR", ROOT / ".." / "shared" / "data")).resolve()
    exe = [sys.executable, "-m", "llmrec_cli"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmrec-bad-") as tmp:
        work = Path(tmp)
        base = {**os.environ, "LLMREC_DATA_DIR": str(data), "LLMREC_CACHE_DIR": str(work / "cache"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "LLMREC_NO_PROGRESS": "1"}
        for name, argv, env in cases(work, args.endpoint):
            if "resume=true" in argv:  # a FINISHED run to refuse
                subprocess.run([*exe, "train", "crm=pop"], env=base, cwd=work, capture_output=True, check=True)
            before = _run_count(base["MLFLOW_TRACKING_URI"])
            out = work / "outputs"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            p = subprocess.run([*exe, *argv], env={**base, **env}, cwd=work, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
            new_runs = _run_count(base["MLFLOW_TRACKING_URI"]) - before
            files = sum(1 for f in out.rglob("*") if f.is_file()) if out.exists() else 0
            left = ", ".join(x for x in (f"{new_runs} MLflow run(s)" if new_runs else "",
                                         f"{files} file(s) in outputs/" if files else "") if x) or "nothing"
            line = lines[-1] if lines else "(no output)"
            rows.append((name, p.returncode, seconds, line, left, len(lines)))
            print(f"{name}: rc={p.returncode} {seconds:.1f} s", file=sys.stderr, flush=True)
    print("| case | exit | seconds | lines | the line printed | left behind |")
    print("|---|---:|---:|---:|---|---|")
    for name, rc, sec, line, left, n in rows:
        print(f"| {name} | {rc} | {sec:.1f} | {n} | `{line.replace('|', '/')}` | {left} |")
    bad = [r for r in rows if r[1] == 0 or r[4] != "nothing" or r[5] != 1]
    return 1 if bad else 0


def _run_count(uri: str) -> int:
    path = Path(uri[len("sqlite:///"):])
    if not path.is_file():
        return 0
    import sqlite3

    with sqlite3.connect(path) as con:
        try:
            return con.execute("select count(*) from runs").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


if __name__ == "__main__":
    sys.exit(main())
