"""MLflow tracking: the only module that imports mlflow.

Store: `tracking.uri` if given, else $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working directory
(embedded, no server). Artifacts of a SQLite store go to `mlartifacts/` beside the database file.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LEN = 6000


def resolve_uri(uri: str | None = None) -> str:
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store (None for other stores)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def require_store(uri: str) -> str:
    """URI itself, or a one-line `LlmrecError` when it names a SQLite file that does not exist yet."""
    from llmrec_cli.errors import LlmrecError

    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise LlmrecError(f"no MLflow store at {uri}: run `llmrec train ...` first, or pass --tracking-uri")
    return uri


def quiet_store_logs() -> None:
    """MLflow's schema-creation chatter (alembic) at WARNING."""
    for name in ("mlflow.store.db.utils", "alembic", "mlflow.store.db"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)):
        out[prefix[:-1]] = json.dumps(d, default=str)
    else:
        out[prefix[:-1]] = d
    return out


class Tracker:
    """One MLflow run: created up front, always terminated (FINISHED, FAILED or KILLED)."""

    def __init__(self, uri: str | None, experiment: str):
        import mlflow
        from mlflow.tracking import MlflowClient

        quiet_store_logs()
        self.uri = resolve_uri(uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, _artifact_root(self.uri))
        self.run_id: str | None = None
        self.logged_params: dict[str, str] = {}  # a reopened run's params: MLflow refuses to change them

    def reconnect(self) -> None:
        """A fresh client (after an interruption left the previous one mid-transaction)."""
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)

    def start(self, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items() if v is not None}
        parent_run_id = parent_run_id or os.environ.get("LLMREC_PARENT_RUN_ID")
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        return self.run_id

    def reopen(self, run_id: str, tags: dict[str, str]) -> None:
        """Continue an unfinished run (MLflow's convention for resuming): status RUNNING again, its error tags
        moved to `previous_error`, TAGS updated; params already logged are kept (changed values become tags
        `resumed.<key>`)."""
        run = self.client.get_run(run_id)
        self.run_id = run_id
        self.logged_params = dict(run.data.params)
        old = run.data.tags
        self.client.update_run(run_id, status="RUNNING")
        for key in ("error", "killed_reason"):
            if key in old:
                self.client.delete_tag(run_id, key)
        resumes = int(old.get("resumed_count", "0") or 0) + 1
        self.set_tags({**tags, "resumed_count": resumes, "resumed_at": int(time.time()),
                       **({"previous_error": old["error"]} if "error" in old else {})})

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items() if v is not None])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        if self.logged_params:  # a reopened run: log only new keys; changed values as tags
            changed = {f"resumed.{p.key}": p.value for p in items
                       if p.key in self.logged_params and self.logged_params[p.key] != p.value}
            items = [p for p in items if p.key not in self.logged_params]
            if changed:
                self.set_tags(changed)
        for s in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[s : s + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None and v == v]
        for s in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[s : s + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)


def get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    """Idempotent and safe against a concurrent creator (the loser re-reads the winner's experiment)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("llmrec", "torch", "transformers", "peft", "mlflow", "hydra-core", "omegaconf", "pandas", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_info() -> dict[str, str]:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown"}
    if sha.returncode != 0:
        return {"git_sha": "unknown"}
    return {"git_sha": sha.stdout.strip(), "git_dirty": str(bool(dirty.stdout.strip())).lower()}


def search_runs(uri: str, experiment_names: list[str] | None = None):
    """Every run of the given experiments (default: all) as mlflow.search_runs' DataFrame.

    Columns: run_id, experiment_id, status, start_time, end_time, `tags.*`, `params.*`, `metrics.*`.
    A missing SQLite file or an unknown experiment name is a one-line `LlmrecError`.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from llmrec_cli.errors import LlmrecError

    require_store(uri)
    quiet_store_logs()
    client = MlflowClient(tracking_uri=uri)
    exps = client.search_experiments()
    if experiment_names:
        known = {e.name: e.experiment_id for e in exps}
        missing = [n for n in experiment_names if n not in known]
        if missing:
            raise LlmrecError(f"unknown experiment {missing[0]!r} in {uri}; known: {', '.join(sorted(known))}")
        ids = [known[n] for n in experiment_names]
    else:
        ids = [e.experiment_id for e in exps]
    if not ids:
        import pandas as pd

        return pd.DataFrame(columns=["run_id", "experiment_id", "status"])
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_ids=ids, max_results=100_000, output_format="pandas")


def download_artifact(uri: str, run_id: str, artifact_path: str, dst: Path) -> Path | None:
    """Download one artifact of a run into `dst`; None when the run has no such artifact."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        return Path(MlflowClient(tracking_uri=uri).download_artifacts(run_id, artifact_path, str(dst)))
    except Exception:  # missing artifact (failed run) or unreadable store: the caller reports "no data"
        return None


def log_files(uri: str, run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
    """Attach files to an existing run (e.g. comparison plots to a sweep's parent run)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)
