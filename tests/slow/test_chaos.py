"""Chaos: SIGKILL runs at seeded random moments (import, preparation, plan building, training, checkpointing,
evaluation, artifact logging), then check that nothing is corrupt, no ghost stays RUNNING after `llmrec runs gc`,
and every resumed run ends with the metrics of an uninterrupted one.

Half the victims are LoRA runs (tiny Llama, synthetic data, three epochs with checkpoints), half BPR runs on
ML-100K; every third kill starts on a cold cache (prepared data and plans deleted), so preparation and plan
building get killed too. `LLMREC_CHAOS_KILLS` (default 20) and `LLMREC_CHAOS_SEED` (default 0) change the
schedule; the counts are printed (pytest -s) and asserted.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import shared_data_or_skip

pytestmark = pytest.mark.slow

LORA = ["method=tallrec", "model=tiny-llama-lora", "dataset=synthetic", "trainer.max_epochs=3", "eval.max_users=16",
        "method.num_samples=32", "trainer.device=cpu", "trainer.num_threads=1"]
CRM = ["quadrant=baseline", "crm=bpr", "dataset=ml-100k", "trainer.max_epochs=4", "trainer.patience=10",
       "eval.max_users=100", "crm.lr=0.01", "trainer.device=cpu", "trainer.num_threads=1"]
METRICS = ("test/sampled/ndcg_10", "test/full/ndcg_10", "test/pointwise/gauc")  # those the reference has


def _train(args, env, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "llmrec_cli", "train", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _client(uri):
    return MlflowClient(tracking_uri=uri)


def _all_runs(uri):
    c = _client(uri)
    return c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=10_000)


def _by_name(uri, name):
    found = [r for r in _all_runs(uri) if r.info.run_name == name]
    return sorted(found, key=lambda r: r.info.start_time)


def test_sigkill_anywhere_leaves_no_corruption_no_ghosts_and_resumes_exactly(tmp_path):
    shared_data_or_skip()
    kills = int(os.environ.get("LLMREC_CHAOS_KILLS", "20"))
    rng = random.Random(int(os.environ.get("LLMREC_CHAOS_SEED", "0")))
    base = {**os.environ, "LLMREC_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}

    # Uninterrupted references, in their own cache and store.
    ref_env = {**base, "LLMREC_CACHE_DIR": str(tmp_path / "ref-cache"),
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'ref.db'}"}
    refs = {}
    for kind, args in (("lora", LORA), ("crm", CRM)):
        t0 = time.perf_counter()
        p = _train([*args, f"run_name=ref-{kind}", f"output_dir={tmp_path / 'ref-out'}"], ref_env, tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        run = _by_name(ref_env["MLFLOW_TRACKING_URI"], f"ref-{kind}")[-1]
        refs[kind] = (run, time.perf_counter() - t0)

    uri = f"sqlite:///{tmp_path / 'chaos.db'}"
    cache = tmp_path / "chaos-cache"
    env = {**base, "LLMREC_CACHE_DIR": str(cache), "MLFLOW_TRACKING_URI": uri}
    out = f"output_dir={tmp_path / 'chaos-out'}"
    counts = {"kills": 0, "killed_before_a_run": 0, "killed_with_a_run": 0, "resume_mismatches": 0,
              "failed_resumes": 0}
    mismatches = []
    for i in range(kills):
        kind = "lora" if i % 2 == 0 else "crm"
        args, (ref, ref_seconds) = (LORA if kind == "lora" else CRM), refs[kind]
        if i % 3 == 0:  # a cold cache: preparation and plan building run (and may be killed)
            for sub in ("prepared", "plans"):
                shutil.rmtree(cache / sub, ignore_errors=True)
        name = f"chaos-{i}-{kind}"
        # a third early (imports, preflight, preparation, plan building, run creation), the rest anywhere later
        delay = rng.uniform(0.3, 5.0) if i % 3 == 0 else rng.uniform(5.0, ref_seconds * 0.9)
        proc = subprocess.Popen([sys.executable, "-m", "llmrec_cli", "train", *args, f"run_name={name}", out],
                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
            finished = proc.returncode == 0  # it ended before its kill: nothing to resume
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            finished = False
            counts["kills"] += 1
            counts["killed_with_a_run" if _by_name(uri, name) else "killed_before_a_run"] += 1
        p = subprocess.CompletedProcess([], 0, "", "") if finished else \
            _train([*args, f"run_name={name}", out, "resume=true"], env, tmp_path)
        if p.returncode != 0:
            counts["failed_resumes"] += 1
            mismatches.append(f"{name}: resume failed: {p.stderr.strip().splitlines()[-1:]}")
            continue
        runs = _by_name(uri, name)
        assert len(runs) == 1, f"{name}: {len(runs)} runs (a resume must continue the killed run, not add one)"
        got = runs[0]
        assert got.info.status == "FINISHED"
        for m in (k for k in METRICS if k in ref.data.metrics):
            if abs(got.data.metrics.get(m, float("nan")) - ref.data.metrics[m]) > 1e-9:
                counts["resume_mismatches"] += 1
                mismatches.append(f"{name}: {m} {got.data.metrics[m]} != {ref.data.metrics[m]}")
                break
        for tag in ("dataset_hash", "candidate_set_hash"):
            assert got.data.tags[tag] == ref.data.tags[tag], f"{name}: {tag} changed (a corrupt cache entry?)"

    gc = subprocess.run([sys.executable, "-m", "llmrec_cli", "runs", "gc"], env=env, cwd=tmp_path,
                        capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    ghosts = [r for r in _all_runs(uri) if r.info.status == "RUNNING"]
    # Later runs on the chaos cache succeed with unchanged data and plan hashes.
    corrupt = 0
    for kind, args in (("lora", LORA), ("crm", CRM)):
        p = _train([*args, f"run_name=after-{kind}", out], env, tmp_path)
        run = _by_name(uri, f"after-{kind}")
        ok = p.returncode == 0 and run and all(run[-1].data.tags[t] == refs[kind][0].data.tags[t]
                                               for t in ("dataset_hash", "candidate_set_hash"))
        corrupt += 0 if ok else 1
    counts.update(corrupt_entries=corrupt, ghost_runs_left=len(ghosts))
    print("chaos:", counts)
    assert counts["kills"] >= kills // 2, counts  # most victims were killed, not finished before the kill
    assert not mismatches, mismatches
    assert corrupt == 0 and not ghosts, counts
