"""Run lifecycle: heartbeat and process tags, ghost runs marked KILLED, resume=true continuing the same MLflow
run (CRMs included), a FINISHED run refusing to resume, Ctrl-C's one line."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from llmrec_cli import runs
from llmrec_cli.config.compose import compose_run
from llmrec_cli.errors import LlmrecError
from llmrec_cli.pipelines.train import run_train

QUICK = ["quadrant=baseline", "crm=bpr", "dataset=synthetic", "trainer.device=cpu", "trainer.max_epochs=4",
         "trainer.patience=10", "crm.lr=0.01"]


def _runs(uri):
    client = MlflowClient(tracking_uri=uri)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_sigkilled_run_is_a_ghost_and_gc_marks_it_killed(work):
    path, uri = work
    code = ("import os, sys; from llmrec_cli.tracking import Tracker; from llmrec_cli import runs; "
            "t = Tracker(None, 'llmrec'); rid = t.start('victim', {'quadrant': 'baseline', **runs.process_tags()}); "
            "print(rid, flush=True); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == -9
    rid = proc.stdout.split()[0]
    client, found = _runs(uri)
    assert client.get_run(rid).info.status == "RUNNING"  # what MLflow alone leaves behind
    state = runs.assess(client.get_run(rid))
    assert state.state == "ghost" and "is gone" in state.reason
    ghosts = runs.gc(uri)
    assert [g.run_id for g in ghosts] == [rid]
    run = client.get_run(rid)
    assert run.info.status == "KILLED" and "is gone" in run.data.tags["killed_reason"]
    assert runs.gc(uri) == []  # idempotent


def test_a_live_run_is_not_a_ghost_but_a_stale_heartbeat_is(work):
    _, uri = work
    from llmrec_cli.tracking import Tracker

    t = Tracker(uri, "llmrec")
    rid = t.start("alive", {"quadrant": "baseline", **runs.process_tags()})
    client = MlflowClient(tracking_uri=uri)
    assert runs.assess(client.get_run(rid)).state == "RUNNING"
    other = runs.assess(client.get_run(rid), here="another-host", now=time.time() + 7200)
    assert other.state == "ghost" and "heartbeat" in other.reason
    assert runs.assess(client.get_run(rid), here="another-host").state == "RUNNING"  # fresh heartbeat
    t.end("FINISHED")


def test_the_heartbeat_advances_while_the_run_lives(work, monkeypatch):
    _, uri = work
    from llmrec_cli.tracking import Tracker

    t = Tracker(uri, "llmrec")
    rid = t.start("beating", {**runs.process_tags(), runs.BEAT_TAG: "100"})
    beat = runs.Heartbeat(uri, rid, interval=0.2).start()
    time.sleep(1.0)
    beat.stop()
    assert float(MlflowClient(tracking_uri=uri).get_run(rid).data.tags[runs.BEAT_TAG]) > time.time() - 5


class _Stop(KeyboardInterrupt):
    pass


def test_resume_continues_the_killed_crm_run_in_the_same_mlflow_run(work, monkeypatch):
    _, uri = work
    from llmrec_cli.crm.bpr import BPR

    whole = run_train(compose_run([*QUICK, "run_name=whole", f"tracking.uri={uri}"]))
    original = BPR.train_epoch
    calls = {"n": 0}

    def dies_in_epoch_3(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Stop
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BPR, "train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run_train(compose_run([*QUICK, "run_name=cut", f"tracking.uri={uri}"]))
    monkeypatch.setattr(BPR, "train_epoch", original)
    client, found = _runs(uri)
    killed = next(r for r in found if r.info.run_name == "cut")
    assert killed.info.status == "KILLED"

    resumed = run_train(compose_run([*QUICK, "run_name=cut", "resume=true", f"tracking.uri={uri}"]))
    assert resumed.run_id == killed.info.run_id  # the same MLflow run continues
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_count"] == "1"
    assert "error" not in run.data.tags and "interrupted" in run.data.tags["previous_error"]
    steps = [m.step for m in client.get_metric_history(resumed.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4]  # epochs 1-2 before the kill, 3-4 after: no step twice
    for key in ("test/full/ndcg_10", "test/sampled/ndcg_10", "fit/best/valid/full/ndcg_10"):
        assert resumed.metrics[key] == pytest.approx(whole.metrics[key], abs=1e-6), key  # exact resume

    with pytest.raises(LlmrecError, match="already FINISHED.*seed=.*run_name="):
        run_train(compose_run([*QUICK, "run_name=cut", "resume=true", f"tracking.uri={uri}"]))
    assert len(_runs(uri)[1]) == 2  # the refusal created no run


def test_ctrl_c_prints_the_run_and_the_resume_command(work):
    path, uri = work
    proc = subprocess.Popen([sys.executable, "-m", "llmrec_cli", "train", "quadrant=baseline", "crm=sasrec",
                             "dataset=synthetic", "trainer.device=cpu", "trainer.max_epochs=500",
                             "trainer.patience=500"], cwd=path, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    seen = []
    for line in proc.stderr:  # the epochs line: the run exists and training has started
        seen.append(line)
        if "training sasrec" in line:
            break
    deadline = time.time() + 120  # the schema exists now: wait for the first epoch (slow on a busy machine)
    while time.time() < deadline and not any("train/loss" in r.data.metrics for r in _runs(uri)[1]):
        time.sleep(0.5)
    proc.send_signal(2)
    _, rest = proc.communicate(timeout=60)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert len(lines) == 1, err
    rid = _runs(uri)[1][0].info.run_id
    assert rid in lines[0] and "KILLED" in lines[0] and "resume=true" in lines[0] and "llmrec train" in lines[0]
