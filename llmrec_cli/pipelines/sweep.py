"""`llmrec sweep -m key=a,b ...`: Hydra multirun behind the Typer command, one MLflow parent run per sweep.

Order of events (it is what keeps parallel children off SQLite's schema-creation and "database is locked"
races): the parent creates the store, the experiment and the parent run; then Hydra expands the grid and
hands each job to the launcher (`launcher=local|joblib|slurm`). Every job runs `llmrec train <its overrides>`
in its own process, with `LLMREC_PARENT_RUN_ID` set, so its run nests under the parent (`mlflow.parentRunId`)
and its memory (GPU included) is freed when it ends. A failing job does not stop the others; at the end a
status table lists every job and the command exits non-zero if any failed.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from llmrec_cli.config.compose import GROUPS, conf_dir
from llmrec_cli.errors import ConfigError
from llmrec_cli.utils.io import atomic_write_json

STATUS_FILE = "job.json"


@dataclass
class JobStatus:
    num: int
    overrides: list[str]
    returncode: int
    seconds: float
    message: str


def _quote_groups(item: str) -> str:
    """`quadrant=1,2` -> `quadrant='1','2'` (group choices are strings; Hydra would parse ints)."""
    m = re.fullmatch(r"(\+?)(\w+)=([\w,]+)", item)
    if not m or m.group(2) not in GROUPS or not re.search(r"(^|,)\d+(,|$)", m.group(3)):
        return item
    return f"{m.group(1)}{m.group(2)}=" + ",".join(f"'{v}'" for v in m.group(3).split(","))


def _value(overrides: list[str], key: str) -> str | None:
    for item in reversed(overrides):
        if item.startswith(f"{key}="):
            return item.split("=", 1)[1]
    return None


def expand(overrides: list[str]) -> list[list[str]]:
    """The job list Hydra's basic sweeper produces: the cartesian product of the sweep overrides and of the
    `hydra.sweeper.params` a preset declares (`experiment=four-quadrants`; the command line wins per key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides([_quote_groups(o) for o in overrides])
    keys = {ov.get_key_element().lstrip("+~") for ov in parsed}
    declared = [f"{k}={v}" for k, v in config_sweep_params(overrides).items() if k not in keys]
    parsed = parser.parse_overrides([_quote_groups(o) for o in declared]) + parsed  # Hydra's order: config first
    axes = []
    for ov in parsed:
        key = ov.get_key_element()
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*axes)]


def config_sweep_params(overrides: list[str]) -> dict[str, str]:
    """`hydra.sweeper.params` of the composed config (presets may declare sweep axes), without composing the
    method: only the `experiment=` choice matters here."""
    experiment = next((o.split("=", 1)[1] for o in reversed(overrides) if o.lstrip("+").startswith("experiment=")),
                      None)
    if not experiment or "," in experiment or experiment == "null":
        return {}
    from omegaconf import OmegaConf

    path = conf_dir() / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        return {}
    params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params", default=None)
    return {str(k): str(v) for k, v in (params or {}).items()}


def dry_run(overrides: list[str]) -> tuple[list[list[str]], list[str], dict]:
    """Compose every job without running anything; returns (jobs, errors, launcher config)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from llmrec_cli.config.compose import compose_run, register_schemas

    jobs = expand(overrides)
    errors = []
    for job in jobs:
        try:
            compose_run(job)
        except ConfigError as exc:
            errors.append(f"[{' '.join(job)}] {exc}")
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        first = [_quote_groups(o) for o in jobs[0]] if jobs else []
        hcfg = compose("config", overrides=first, return_hydra_config=True)
        launcher = OmegaConf.to_container(hcfg.hydra.launcher, resolve=False)
    GlobalHydra.instance().clear()
    return jobs, errors, launcher


def run_sweep(overrides: list[str]) -> tuple[str, list[JobStatus]]:
    """Create the parent run, launch every job through Hydra, and collect their statuses."""
    from llmrec_cli import runs
    from llmrec_cli.config.compose import register_schemas
    from llmrec_cli.tracking import Tracker
    from llmrec_cli.utils.console import say

    overrides = [o for o in overrides if o not in ("-m", "--multirun")]
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        raise ConfigError(f"unknown option {bad[0]!r}: give sweep options before the overrides")
    jobs = expand(overrides)  # also validates the override grammar before anything is created
    from llmrec_cli.preflight import check_store, check_writable
    from llmrec_cli.tracking import resolve_uri

    check_store(resolve_uri(_value(overrides, "tracking.uri")))
    check_writable("output_dir", Path(_value(overrides, "output_dir") or "outputs"))
    tracker = Tracker(_value(overrides, "tracking.uri"), _value(overrides, "tracking.experiment") or "llmrec")
    note = runs.gc_note(tracker.uri)
    if note:
        say(note)
    name = _value(overrides, "run_name") or datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = tracker.start(f"sweep-{name}", {"sweep": "true", "sweep_overrides": " ".join(overrides),
                                             "sweep_jobs": str(len(jobs)), **runs.process_tags()})
    heartbeat = runs.Heartbeat(tracker.uri, parent).start()
    sweep_dir = Path(_value(overrides, "output_dir") or "outputs").resolve() / "sweeps" / parent
    os.environ["LLMREC_PARENT_RUN_ID"] = parent
    os.environ["MLFLOW_TRACKING_URI"] = tracker.uri
    os.environ["LLMREC_SWEEP_DIR"] = str(sweep_dir)
    try:
        _launch(overrides, sweep_dir, register_schemas)
        statuses = collect(sweep_dir, jobs)
        failed = sum(s.returncode != 0 for s in statuses)
        tracker.log_metrics({"sweep/jobs": len(statuses), "sweep/failed": failed})
        tracker.log_text(format_status(statuses), "sweep_status.txt")
        if failed < len(statuses):
            _log_comparison(tracker, parent, sweep_dir)
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException as exc:
        tracker.set_tags({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        tracker.end("FAILED")
        raise
    finally:
        heartbeat.stop()
        os.environ.pop("LLMREC_PARENT_RUN_ID", None)
    tracker.end("FINISHED" if failed == 0 else "FAILED")
    return parent, statuses


def _launch(overrides: list[str], sweep_dir: Path, register_schemas) -> None:
    """Hand the grid to `hydra.main` (Hydra's own sweeper and the chosen launcher)."""
    import hydra

    register_schemas()
    # Axes a preset declares go on the command line (before the user's, as Hydra orders them), so that a key
    # given on both takes the user's values once, and the jobs match `expand`.
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    declared = [f"{k}={v}" for k, v in config_sweep_params(overrides).items() if k not in given]
    argv = [
        "llmrec-sweep", "-m", *[_quote_groups(o) for o in declared + overrides], "hydra.sweeper.params=null",
        f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}", "hydra.job.chdir=false",
        "hydra/job_logging=none", "hydra/hydra_logging=none",
    ]
    saved = sys.argv
    sys.argv = argv
    try:
        hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(sweep_job)()
    except SystemExit as exc:  # Hydra exits on errors of its own (bad override, missing plugin)
        if exc.code not in (0, None):
            raise ConfigError(f"hydra could not launch the sweep (exit {exc.code}); see the message above") from None
    finally:
        sys.argv = saved


def sweep_job(cfg) -> int:
    """One job: `llmrec train` with this job's overrides, in a fresh process. Picklable (joblib, submitit)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    num = int(hc.job.num)
    overrides = [o for o in hc.overrides.task]
    job_dir = Path(os.environ.get("LLMREC_SWEEP_DIR", hc.sweep.dir)) / str(num)
    job_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "llmrec_cli", "train", *overrides, f"+tags.sweep_job={num}"]
    env = {**os.environ, "LLMREC_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    with open(job_dir / "train.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    text = (job_dir / "train.log").read_text(errors="replace").strip().splitlines()
    errors = [ln for ln in text if ln.startswith("error:")]
    message = (errors[-1] if errors else text[-1] if text else "")[:300] if rc else "ok"
    seconds = time.perf_counter() - t0
    atomic_write_json(job_dir / STATUS_FILE, {"num": num, "overrides": overrides, "returncode": rc,
                                              "seconds": seconds, "message": message})
    shown = " ".join(o for o in overrides if not o.startswith(("tracking.uri=", "launcher=", "output_dir=")))
    result = _result_line(text) if rc == 0 else message
    print(f"job {num} {'ok' if rc == 0 else 'FAILED'} in {seconds:.0f} s: {shown}  {result}", flush=True)
    return rc


def _result_line(log_lines: list[str]) -> str:
    """'test/full ndcg_10=0.0817, test/sampled ndcg_10=0.6644' from a finished job's results table."""
    found = []
    for line in log_lines:
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) >= 3 and cells[0] in ("test/full", "test/sampled") and re.fullmatch(r"[\d.]+", cells[2] or ""):
            found.append(f"{cells[0]} ndcg_10={cells[2]}")
    return ", ".join(found[:2])


def collect(sweep_dir: Path, jobs: list[list[str]]) -> list[JobStatus]:
    """Statuses of every expected job; a job that left no status file (launcher died) counts as failed."""
    out = []
    for num, job in enumerate(jobs):
        path = sweep_dir / str(num) / STATUS_FILE
        if path.is_file():
            s = json.loads(path.read_text())
            out.append(JobStatus(s["num"], s["overrides"], s["returncode"], s["seconds"], s["message"]))
        else:
            out.append(JobStatus(num, job, -1, 0.0, "no status: the job did not run or was killed"))
    return out


def format_status(statuses: list[JobStatus]) -> str:
    lines = [f"{'job':>3}  {'status':<6}  {'exit':>4}  {'seconds':>7}  overrides / message"]
    for s in statuses:
        status = "ok" if s.returncode == 0 else "FAILED"
        shown = " ".join(o for o in s.overrides if not o.startswith(("tracking.uri=", "launcher=")))
        lines.append(f"{s.num:>3}  {status:<6}  {s.returncode:>4}  {s.seconds:>7.1f}  {shown}")
        if s.returncode != 0:
            lines.append(f"{'':>26}{s.message}")
    failed = sum(s.returncode != 0 for s in statuses)
    lines.append(f"{len(statuses)} jobs: {len(statuses) - failed} ok, {failed} failed")
    return "\n".join(lines)


def _log_comparison(tracker, parent: str, sweep_dir: Path) -> None:
    """The comparison table (markdown) and the plots of the sweep's children, as artifacts of the parent."""
    from llmrec_cli.errors import LlmrecError
    from llmrec_cli.report.compare import build_comparison
    from llmrec_cli.report.plots import write_plots
    from llmrec_cli.report.render import to_markdown
    from llmrec_cli.report.select import Selection

    try:
        comp = build_comparison(tracker.uri, Selection(parent=parent))
    except LlmrecError as exc:  # e.g. no child logged the default metrics
        tracker.set_tags({"compare_note": str(exc)})
        return
    tracker.log_text(to_markdown(comp), "compare/compare.md")
    for path in write_plots(comp, sweep_dir / "plots"):
        tracker.log_artifact(path, "compare")
