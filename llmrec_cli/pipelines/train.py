"""`llmrec train`: prepare -> plan -> fit -> evaluate -> log, in one readable function.

Feature -> config key:
- data and split: `dataset=`, `dataset.path=`, `dataset.min_rating=`, `dataset.kcore=` (cached, hashed)
- data and split: also `dataset.split=loo|temporal`, `dataset.split_time=[0.8,0.9]`
- shared candidates: `eval.num_negatives=`, `eval.negative_sampling=`, `eval.max_users=`, `seed=` (cached, hashed)
- what fit sees: `data.train_view()` only (held-out targets unreachable); the evaluator hands `score` the
  histories
- comparability tags: `dataset_hash`, `candidate_set_hash` (differs per seed), `protocol_hash` (everything but
  the seed: runs with equal protocol_hash may be averaged over seeds), `protocol` (a readable label),
  `n_eval_users`, `n_candidates`
- method: `quadrant=`, `method=`, `crm=`, `model=`; training loop: `trainer.*` (early stopping on `eval.monitor`)
- tracking: `tracking.uri=`, `tracking.experiment=`, `run_name=`, `+tags.KEY=VALUE`

Every run ends in MLflow as FINISHED, FAILED (with the error as tag `error`) or KILLED (Ctrl-C).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from llmrec_cli import registry
from llmrec_cli.config.fingerprint import config_fingerprint
from llmrec_cli.errors import LlmrecError
from llmrec_cli.tracking import Tracker, flatten, git_info, library_versions
from llmrec_cli.utils.io import atomic_path, atomic_write

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_id: str
    run_name: str
    metrics: dict[str, float]
    tracking_uri: str


def default_run_name(cfg: DictConfig) -> str:
    parts = [f"q{cfg.quadrant.id}" if cfg.quadrant.id != "baseline" else "baseline", cfg.method.name]
    if uses_crm(cfg):
        parts.append(cfg.crm.name)
    if cfg.model.name != "none":
        parts.append(cfg.model.name)
    return "-".join([*dict.fromkeys(parts), cfg.dataset.name, f"s{cfg.seed}"])


def uses_crm(cfg: DictConfig) -> bool:
    """Whether the run's CRM is part of the recommender at inference (baseline, quadrants 1 and 2)."""
    return bool(cfg.quadrant.crm_at_inference)


def run_tags(cfg: DictConfig) -> dict[str, str]:
    tags = {
        "quadrant": cfg.quadrant.id, "method": cfg.method.name, "dataset": cfg.dataset.name,
        "model": cfg.model.name, "crm": cfg.crm.name if uses_crm(cfg) else "none", "seed": cfg.seed,
        "crm_config_hash": _crm_hash(cfg), "config_fingerprint": config_fingerprint(cfg),
        **git_info(), **{f"version.{k}": v for k, v in library_versions().items()}, **dict(cfg.tags),
    }
    return {k: str(v) for k, v in tags.items()}


def _crm_hash(cfg: DictConfig) -> str:
    from llmrec_cli.crm.configs import crm_config_hash

    return crm_config_hash(cfg.crm) if cfg.get("crm") is not None else ""


class NullTracker:
    """What the non-zero ranks of a multi-process run get instead of MLflow: rank 0 alone records the run."""

    uri = ""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def tracked(cfg: DictConfig, body, extra_tags: dict | None = None) -> RunSummary:
    """Start an MLflow run, call `body(tracker, run_id) -> metrics`, and always terminate the run.

    Under a multi-process launcher (see `llmrec_cli.llm.distributed`) rank 0 starts the run and the other
    ranks run `body` with a `NullTracker` and rank 0's run id."""
    from llmrec_cli.llm import distributed

    run_name = cfg.run_name or default_run_name(cfg)
    w = distributed.world()
    if w.active:
        distributed.init(_device(cfg))
        if not w.is_main:
            run_id = distributed.broadcast(None)
            return RunSummary(run_id, run_name, body(NullTracker(), run_id), "")
    from llmrec_cli import runs
    from llmrec_cli.utils.console import say

    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment)
    tags = {**run_tags(cfg), **(extra_tags or {}), **runs.process_tags()}
    run_id = resume_target(tracker, cfg, run_name) if cfg.get("resume") else None
    if run_id is not None:
        tracker.reopen(run_id, tags)
    else:
        run_id = tracker.start(run_name, tags)
    if w.active:
        distributed.broadcast(run_id)
        tracker.set_tags({"world_size": w.size})
    heartbeat = runs.Heartbeat(tracker.uri, run_id).start()
    previous = _sigterm_as_interrupt()
    try:
        metrics = body(tracker, run_id)
    except KeyboardInterrupt as exc:
        _terminate(tracker, "KILLED", "interrupted (KeyboardInterrupt or SIGTERM)")
        say(f"interrupted: run {run_id} marked KILLED; continue it with: {resume_command()}")
        raise Interrupted(str(exc)) from None
    except BaseException as exc:
        _terminate(tracker, "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finally:
        heartbeat.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    tracker.end("FINISHED")
    return RunSummary(run_id, run_name, metrics, tracker.uri)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM after the run was marked KILLED and the resume command printed."""

    reported = True


def resume_command() -> str:
    """This command line with `resume=true` (for `llmrec train`), else a hint."""
    import shlex
    import sys

    args = sys.argv[1:]
    if not args or args[0] != "train":
        return "the same command with resume=true"
    kept = [a for a in args[1:] if not a.startswith("resume=")]
    return " ".join(["llmrec", "train", *map(shlex.quote, kept), "resume=true"])


def resume_target(tracker: Tracker, cfg: DictConfig, run_name: str) -> str | None:
    """The run `resume=true` continues: the newest run in this experiment with the same name and configuration
    (tag `config_fingerprint`) when it is KILLED or FAILED (ghosts are marked KILLED first); None (a new run)
    when there is none. A FINISHED or live one is a one-line error."""
    from llmrec_cli import runs
    from llmrec_cli.utils.console import say

    runs.gc(tracker.uri)
    fingerprint = config_fingerprint(cfg)
    found = tracker.client.search_runs([tracker.experiment_id],
                                       filter_string=f"tags.config_fingerprint = '{fingerprint}'",
                                       order_by=["attributes.start_time DESC"], max_results=50)
    found = [r for r in found if r.info.run_name == run_name and "source_run" not in r.data.tags]
    if not found:
        say(f"resume=true: no earlier run named {run_name} with this configuration in {tracker.uri}: "
            f"starting a new run")
        return None
    run = found[0]
    rid, status = run.info.run_id, run.info.status
    if status == "FINISHED":
        raise LlmrecError(f"resume=true: run {rid} ({run_name}) of this configuration already FINISHED; to train "
                          f"it again pick another seed= or run_name=, or drop resume=true for a separate rerun")
    if status == "RUNNING":
        where = f"{run.data.tags.get(runs.HOST_TAG, '?')}:{run.data.tags.get(runs.PID_TAG, '?')}"
        raise LlmrecError(f"resume=true: run {rid} ({run_name}) is still running ({where}); wait for it or stop "
                          f"it, then resume")
    say(f"resume=true: continuing run {rid} ({run_name}, {status}) in the same MLflow run")
    return rid


def _terminate(tracker: Tracker, status: str, error: str) -> None:
    """Record the error and the final status even if the interruption hit the store mid-call: ignore further
    SIGTERMs meanwhile and retry once with a fresh client."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for attempt in range(2):
        try:
            if attempt:
                tracker.reconnect()
            tracker.set_tags({"error": error})
            tracker.end(status)
            return
        except Exception:  # the store connection may be in a broken state after the interruption
            log.warning("could not record status %s (attempt %d)", status, attempt + 1, exc_info=attempt == 1)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler or `kill`) ends the run as KILLED, like Ctrl-C. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def run_train(cfg: DictConfig) -> RunSummary:
    from llmrec_cli.preflight import check_run

    check_run(cfg)  # store, folders, model and data: one-line errors before any MLflow run exists
    return tracked(cfg, lambda tracker, run_id: _train(cfg, tracker, run_id))


@dataclass
class Session:
    """What every pipeline sets up before a method runs: data, the shared plan, the evaluator, the context."""

    data: object  # PreparedData: the evaluator's (targets included)
    train: object  # TrainView: what the method fits on
    plan: object
    evaluator: object
    ctx: object
    run_dir: Path
    resolved_yaml: str
    timings: dict


def setup(cfg: DictConfig, tracker: Tracker, run_id: str) -> Session:
    from llmrec_cli.data.candidates import get_plan, protocol_hash, protocol_label
    from llmrec_cli.data.load import load_prepared
    from llmrec_cli.eval.evaluator import Evaluator
    from llmrec_cli.methods.base import RunContext
    from llmrec_cli.utils.runtime import configure_threads, seed_everything

    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
    tracker.log_text(resolved, "config.yaml")
    threads, source = configure_threads(cfg.trainer.num_threads, _preferred_threads(cfg))
    seed_everything(int(cfg.seed))
    device = _device(cfg)
    tracker.set_tags({"device": device, "cpu_threads": threads, "cpu_threads_from": source})

    t0 = time.perf_counter()
    data = load_prepared(cfg.dataset)
    plan = get_plan(data, cfg.eval, int(cfg.seed))
    tracker.set_tags({"dataset_hash": data.data_hash, "candidate_set_hash": plan.hash,
                      "protocol_hash": protocol_hash(data, plan.settings), "split": data.split,
                      "protocol": protocol_label(data, cfg.dataset, plan),
                      "protocol_preset": str(cfg.protocol.name), "crm_loss": str(cfg.crm.get("loss", "")),
                      "n_eval_users": len(plan["test"].users), "n_candidates": int(cfg.eval.num_negatives) + 1,
                      "n_users": data.n_users, "n_items": data.n_items})
    timings = {"time/prepare_seconds": time.perf_counter() - t0}
    evaluator = Evaluator(data, plan, cfg.eval, int(cfg.seed))
    registry.load_all()
    run_dir = Path(cfg.output_dir) / run_id
    ctx = RunContext(
        cfg=cfg, seed=int(cfg.seed), device=device, output_dir=run_dir,
        log_metrics=tracker.log_metrics, log_params=tracker.log_params, log_text=tracker.log_text,
        set_tags=tracker.set_tags,
        progress=bool(cfg.trainer.progress),
    )

    def validate(method) -> dict[str, float]:
        split, proto, _ = ctx.monitor_name(method).split("/")
        return evaluator.evaluate(method, splits=[split], protocols=[proto]).metrics

    ctx.validate = validate
    return Session(data, data.train_view(), plan, evaluator, ctx, run_dir, resolved, timings)


def _preferred_threads(cfg: DictConfig) -> int | None:
    """The CRM's own CPU thread count for a pure CRM run (`CRM.cpu_threads`, measured per model); None: all."""
    if cfg.method.name != "baseline" or cfg.get("crm") is None:
        return None
    registry.load_all()
    entry = registry.CRMS.get(cfg.crm.name)
    return getattr(entry.obj, "cpu_threads", None) if entry is not None else None


def _device(cfg: DictConfig) -> str:
    """`trainer.device` resolved (auto -> cuda when available); `cuda:<local rank>` under a launcher."""
    from llmrec_cli.llm import distributed
    from llmrec_cli.utils.runtime import resolve_device

    device = resolve_device(cfg.trainer.device)
    return distributed.init(device) if distributed.world().active else device


def _train(cfg: DictConfig, tracker: Tracker, run_id: str) -> dict[str, float]:
    from llmrec_cli.llm import distributed

    s = setup(cfg, tracker, run_id)
    method = registry.METHODS[cfg.method.name].obj(cfg.method, s.ctx)
    t0 = time.perf_counter()
    fit_summary = method.fit(s.train) or {}
    s.timings["time/fit_seconds"] = time.perf_counter() - t0
    if not distributed.world().is_main:
        return fit_summary  # rank 0 saves, evaluates and logs
    ckpt = s.run_dir / "checkpoint"
    method.save(ckpt)
    atomic_write(ckpt / "config.yaml", s.resolved_yaml)
    tracker.log_artifact(ckpt, "checkpoint")
    return evaluate_and_log(method, s, tracker, {f"fit/{k}": v for k, v in fit_summary.items()})


def evaluate_and_log(method, s: Session, tracker: Tracker, extra: dict[str, float]) -> dict[str, float]:
    """Score every split and protocol, log final metrics (step 0) and the per-user/prediction frames."""
    cfg = s.ctx.cfg
    t0 = time.perf_counter()
    result = s.evaluator.evaluate(method, keep_predictions=bool(cfg.tracking.log_predictions),
                                  progress=s.ctx.progress)
    s.timings["time/eval_seconds"] = time.perf_counter() - t0
    final = {**result.metrics, **extra, **s.timings, **method.cost_summary()}
    tracker.log_metrics(final, step=0)
    if method.provenance():
        tracker.set_tags(method.provenance())
    if result.notes:
        for note in result.notes:
            log.warning("%s", note)
        tracker.log_text("\n".join(result.notes) + "\n", "eval_notes.txt")
        tracker.set_tags({"eval_notes": "; ".join(result.notes)[:4000]})
    for name, frame in (("per_user_metrics", result.per_user), ("predictions", result.predictions)):
        if frame is None:
            continue
        path = s.run_dir / f"{name}.parquet"
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        tracker.log_artifact(path)
    return final
