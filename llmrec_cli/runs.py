"""Run lifecycle: who runs a run, a heartbeat while it runs, and the ghosts a killed process leaves behind.

Every run records tags `llmrec.host`, `llmrec.pid` and `llmrec.pid_start` (the process's start time, so a reused
pid is not mistaken for the run's process) and `llmrec.heartbeat` (unix seconds), refreshed every
`HEARTBEAT_SECONDS` by a daemon thread while the run lives. A run that is RUNNING in the store is a *ghost* when
its process is gone (same host) or, from any host, when its heartbeat is older than `max_age` (runs logged
before these tags: their start time). `gc` marks ghosts KILLED with the reason in tag `killed_reason`;
`llmrec runs gc` calls it, and so do `llmrec compare` and `llmrec sweep` before they read the store.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HOST_TAG, PID_TAG, PID_START_TAG, BEAT_TAG = "llmrec.host", "llmrec.pid", "llmrec.pid_start", "llmrec.heartbeat"
HEARTBEAT_SECONDS = float(os.environ.get("LLMREC_HEARTBEAT_SECONDS", "60"))
DEFAULT_MAX_AGE = 30 * 60.0  # seconds without a heartbeat before a run from another host counts as a ghost


def host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: host(), PID_TAG: str(pid), PID_START_TAG: process_start(pid) or "",
            BEAT_TAG: str(int(time.time()))}


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether PID runs on this host (and is the same process, when its start time is known); zombies are dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal check is all there is
    state, *rest = stat.rsplit(")", 1)[1].split()
    if state in ("Z", "X"):
        return False
    return not start or rest[18] == start


class Heartbeat:
    """Refresh the run's `llmrec.heartbeat` tag every INTERVAL seconds from a daemon thread (own client)."""

    def __init__(self, uri: str, run_id: str, interval: float = HEARTBEAT_SECONDS):
        self.uri, self.run_id, self.interval = uri, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="llmrec-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _beat(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        while not self._stop.wait(self.interval):
            try:
                client.set_tag(self.run_id, BEAT_TAG, str(int(time.time())))
            except Exception:  # a busy or briefly unreachable store: the next beat tries again
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


@dataclass
class RunState:
    run_id: str
    name: str
    status: str  # as stored
    state: str  # the real state: the status, or "ghost" for a RUNNING run whose process is gone
    reason: str  # why a ghost is one ("" otherwise)
    where: str  # host:pid
    heartbeat_age: float | None  # seconds since the last heartbeat (None: never recorded)
    start_time: float  # unix seconds


def _tag(tags: dict, key: str) -> str:
    value = tags.get(key)
    return "" if value is None else str(value)


def assess(run, now: float | None = None, max_age: float = DEFAULT_MAX_AGE, here: str | None = None) -> RunState:
    """The real state of one MLflow run (an `mlflow.entities.Run`)."""
    now = time.time() if now is None else now
    here = host() if here is None else here
    tags, info = run.data.tags, run.info
    start = (info.start_time or 0) / 1000.0
    beat_text = _tag(tags, BEAT_TAG)
    beat = float(beat_text) if beat_text else None
    age = now - (beat if beat is not None else start)
    where = f"{_tag(tags, HOST_TAG)}:{_tag(tags, PID_TAG)}" if tags.get(HOST_TAG) else ""
    state, reason = info.status, ""
    if info.status == "RUNNING":
        pid = _tag(tags, PID_TAG)
        if tags.get(HOST_TAG) == here and pid.isdigit() and not process_alive(int(pid), _tag(tags, PID_START_TAG)):
            state, reason = "ghost", f"process {pid} on {here} is gone"
        elif age > max_age:
            what = "heartbeat" if beat is not None else "heartbeat since its start (no heartbeat recorded)"
            state, reason = "ghost", f"no {what} for {age / 60:.0f} min (> {max_age / 60:.0f} min)"
    return RunState(info.run_id, info.run_name or "", info.status, state, reason, where,
                    age if beat is not None else None, start)


def list_runs(uri: str, experiments: list[str] | None = None, statuses: list[str] | None = None,
              max_age: float = DEFAULT_MAX_AGE, limit: int = 1000) -> list[RunState]:
    """The newest LIMIT runs of the store (optionally of some experiments / stored statuses), newest first."""
    client = _client(uri)
    exps = client.search_experiments()
    ids = [e.experiment_id for e in exps if not experiments or e.name in experiments]
    if not ids:
        return []
    flt = " OR ".join(f"attributes.status = '{s}'" for s in statuses or [])
    runs = client.search_runs(ids, filter_string=flt, max_results=limit, order_by=["attributes.start_time DESC"])
    return [assess(r, max_age=max_age) for r in runs]


def gc(uri: str, max_age: float = DEFAULT_MAX_AGE, dry_run: bool = False) -> list[RunState]:
    """Mark every ghost run KILLED (tags `killed_reason` and `error`); returns the ghosts found."""
    client = _client(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    ghosts = [s for s in (assess(r, max_age=max_age) for r in
                          client.search_runs(ids, filter_string="attributes.status = 'RUNNING'", max_results=50_000))
              if s.state == "ghost"]
    if not dry_run:
        for g in ghosts:
            client.set_tag(g.run_id, "killed_reason", g.reason)
            client.set_tag(g.run_id, "error", f"killed: {g.reason} (marked by llmrec runs gc)")
            client.set_terminated(g.run_id, status="KILLED")
    return ghosts


def gc_note(uri: str, max_age: float = DEFAULT_MAX_AGE) -> str | None:
    """`gc` for compare and sweep: a one-line note when it marked runs, None otherwise (or on a missing store)."""
    from llmrec_cli.tracking import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return None
    ghosts = gc(uri, max_age)
    if not ghosts:
        return None
    return (f"marked {len(ghosts)} ghost run(s) KILLED ({ghosts[0].reason}"
            f"{'; ...' if len(ghosts) > 1 else ''}): `llmrec runs --status KILLED` lists them")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    from llmrec_cli.tracking import quiet_store_logs

    quiet_store_logs()
    return MlflowClient(tracking_uri=uri)
