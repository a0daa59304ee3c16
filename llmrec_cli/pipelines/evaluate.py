"""`llmrec eval`: re-evaluate a finished run (by MLflow run id) or a local checkpoint folder.

The run's resolved config is reloaded from its `config.yaml`; `eval.*`, `tracking.*`, `trainer.device`,
`seed` and `run_name` may be overridden (e.g. `eval.num_negatives=99`). The result is a new MLflow run tagged
`source_run=<id>`, so the original stays untouched.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from llmrec_cli import registry
from llmrec_cli.errors import ConfigError, LlmrecError
from llmrec_cli.pipelines.train import RunSummary, evaluate_and_log, setup, tracked
from llmrec_cli.tracking import Tracker

ALLOWED = ("eval.", "tracking.", "trainer.device", "trainer.progress", "seed", "run_name", "output_dir", "+tags.", "tags.")


def load_checkpoint_config(run_id: str | None, checkpoint: Path | None, tracking_uri: str | None) -> tuple[DictConfig, Path, str]:
    if checkpoint is not None:
        if not (checkpoint / "config.yaml").is_file():
            raise LlmrecError(f"{checkpoint}/config.yaml not found: --checkpoint must be a run's checkpoint folder")
        return OmegaConf.load(checkpoint / "config.yaml"), checkpoint, checkpoint.parent.name
    tracker = Tracker(tracking_uri, "llmrec")
    try:
        tracker.get_run(run_id)
    except Exception:
        raise LlmrecError(f"run {run_id} not found in {tracker.uri}: check --tracking-uri / MLFLOW_TRACKING_URI") from None
    dst = Path(tempfile.mkdtemp(prefix="llmrec-eval-"))
    try:
        path = tracker.download(run_id, "checkpoint", dst)
    except Exception:
        raise LlmrecError(f"run {run_id} has no 'checkpoint' artifact (did it finish?)") from None
    return OmegaConf.load(path / "config.yaml"), path, run_id


def run_eval(run_id: str | None, checkpoint: Path | None, overrides: list[str], tracking_uri: str | None) -> RunSummary:
    cfg, path, source = load_checkpoint_config(run_id, checkpoint, tracking_uri)
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or not key.startswith(ALLOWED):
            raise ConfigError(f"llmrec eval accepts only {', '.join(ALLOWED)} overrides, got {item!r}")
    OmegaConf.set_struct(cfg, False)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    if tracking_uri:
        cfg.tracking.uri = tracking_uri
    if not any(o.startswith("run_name=") for o in overrides):
        cfg.run_name = f"eval-{cfg.run_name or source}"
    cfg.resume = False  # a re-evaluation is always a new run (tagged source_run), never a resume of its source

    def body(tracker: Tracker, new_run_id: str) -> dict[str, float]:
        s = setup(cfg, tracker, new_run_id)
        method = registry.METHODS[cfg.method.name].obj(cfg.method, s.ctx)
        method.load(path, s.train)
        return evaluate_and_log(method, s, tracker, {})

    return tracked(cfg, body, {"source_run": source, "eval_only": "true"})
