"""A CRM as a component of a larger method: reuse a finished run's CRM or train one in-line.

Used by quadrant 1 (CRM embeddings in the LLM prompt), quadrant 2 warm starts and `candidates=crm_topk`
(quadrants 3/4, the CRM as a pre-filter). Feature -> config key:

- `crm.from_run=auto`: the newest FINISHED `quadrant=baseline` run of the same `crm=` config, seed and dataset
  (preferring the current sweep's), so one CRM per seed serves every arm; trained in-line when there is none.
- `crm.from_run=<mlflow run id>`: load the CRM checkpoint (`checkpoint/crm.pt`) of a FINISHED run of the same
  prepared dataset (its `dataset_hash` tag must match) and the same `crm=` type; nothing is retrained.
- otherwise the CRM named by `crm=` is trained in-line with the baseline loop (early stopping on
  `eval.monitor`, valid split only); its per-epoch metrics are logged as `crm/train/loss`, `crm/valid/...`.

Lineage goes to tags: `crm_source` (`run:<id>` or `inline`) and `crm_from_run`.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from llmrec_cli.crm.base import CRM
from llmrec_cli.crm.configs import crm_config_hash
from llmrec_cli.errors import ConfigError, LlmrecError

log = logging.getLogger(__name__)

CRM_FILE = "crm.pt"


def build_crm(crm_cfg, n_users: int, n_items: int, device: str) -> CRM:
    from llmrec_cli import registry

    registry.load_all()
    return registry.CRMS[crm_cfg.name].obj(crm_cfg, n_users, n_items).to(device)


def component_crm(ctx, data) -> CRM:
    """The run's CRM, fitted and in eval mode: from `crm.from_run` (`auto`: the matching baseline run, see
    `find_crm_run`), else trained in-line."""
    run_id = ctx.cfg.crm.get("from_run")
    if str(run_id) == AUTO:
        run_id = find_crm_run(ctx, data)
        if run_id is None:
            log.warning("crm.from_run=auto: no FINISHED quadrant=baseline crm=%s run of seed %s on this dataset "
                        "and CRM config: training it in-line", ctx.cfg.crm.name, ctx.seed)
            ctx.set_tags({"crm_from_run_auto": "none found"})
    if run_id:
        return load_crm_run(str(run_id), ctx, data)
    return train_crm_inline(ctx, data)


AUTO = "auto"
def find_crm_run(ctx, data) -> str | None:
    """`crm.from_run=auto`: the newest FINISHED `quadrant=baseline` run with this run's `crm=` (same
    `crm_config_hash`), seed and prepared dataset (`dataset_hash`), preferring one of the same sweep (the
    parent run of `llmrec sweep`). This is how `experiment=four-quadrants` trains each seed's SASRec once and
    every arm of that seed reuses it (pre-filter, quadrant 1's soft tokens)."""
    import os

    from mlflow.tracking import MlflowClient

    from llmrec_cli.tracking import resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(ctx.cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(ctx.cfg.tracking.experiment))
    if exp is None:
        return None
    query = (f"tags.quadrant = 'baseline' and tags.crm = '{ctx.cfg.crm.name}' and tags.seed = '{ctx.seed}' "
             f"and tags.dataset_hash = '{data.data_hash}' and tags.crm_config_hash = '{crm_config_hash(ctx.cfg.crm)}' "
             f"and attributes.status = 'FINISHED'")
    runs = client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50)
    parent = os.environ.get("LLMREC_PARENT_RUN_ID")
    same_sweep = [r for r in runs if parent and r.data.tags.get("mlflow.parentRunId") == parent]
    chosen = (same_sweep or runs or [None])[0]
    if chosen is None:
        return None
    ctx.set_tags({"crm_from_run_auto": chosen.info.run_id})
    log.info("crm.from_run=auto: reusing %s run %s", ctx.cfg.crm.name, chosen.info.run_id)
    return chosen.info.run_id


def train_crm_inline(ctx, data) -> CRM:
    from llmrec_cli.crm.base import fit_crm
    from llmrec_cli.methods.baseline import CRMMethod

    crm = build_crm(ctx.cfg.crm, data.n_users, data.n_items, ctx.device)
    wrapper = CRMMethod(ctx.cfg.method, ctx, crm)
    wrapper.data = data

    def log_prefixed(metrics: dict[str, float], step: int) -> None:
        ctx.log_metrics({f"crm/{k}": v for k, v in metrics.items()}, step)

    sub = dataclasses.replace(ctx, log_metrics=log_prefixed)
    summary = fit_crm(crm, data, sub, lambda: ctx.validate(wrapper), ctx.monitor_name(wrapper))
    ctx.log_metrics({f"crm/fit/{k}": v for k, v in summary.items()}, 0)
    ctx.set_tags({"crm_source": "inline"})
    crm.eval()
    return crm


def load_crm_run(run_id: str, ctx, data) -> CRM:
    """The CRM of finished run RUN_ID, checked against this run's data and `crm=`; tags the lineage."""
    from mlflow.tracking import MlflowClient

    from llmrec_cli.tracking import download_artifact, resolve_uri

    uri = resolve_uri(ctx.cfg.tracking.uri)
    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except Exception:
        raise ConfigError(f"crm.from_run={run_id}: no such run in {uri} (check tracking.uri / the run id)") from None
    if run.info.status != "FINISHED":
        raise ConfigError(f"crm.from_run={run_id}: the run is {run.info.status}, reuse a FINISHED run")
    run_hash = run.data.tags.get("dataset_hash")
    if run_hash != data.data_hash:
        raise ConfigError(f"crm.from_run={run_id} was trained on dataset {run.data.tags.get('dataset')} "
                          f"(hash {run_hash}), this run uses dataset={ctx.cfg.dataset.name} (hash {data.data_hash}): "
                          f"reuse a run of the same prepared dataset")
    dst = Path(tempfile.mkdtemp(prefix="llmrec-crm-"))
    path = download_artifact(uri, run_id, "checkpoint", dst)
    if path is None or not (path / CRM_FILE).is_file():
        raise ConfigError(f"crm.from_run={run_id} has no checkpoint/{CRM_FILE}: name a CRM run "
                          f"(quadrant=baseline, or a quadrant-1 run) that finished")
    run_cfg = OmegaConf.load(path / "config.yaml")
    if run_cfg.crm.name != ctx.cfg.crm.name:
        raise ConfigError(f"crm.from_run={run_id} is a {run_cfg.crm.name} run but crm={ctx.cfg.crm.name}: "
                          f"add crm={run_cfg.crm.name}")
    crm = load_crm_file(path, run_cfg.crm, data, ctx.device)
    ctx.set_tags({"crm_source": f"run:{run_id}", "crm_from_run": run_id,
                  "crm_from_run_seed": str(run_cfg.get("seed", ""))})
    log.info("reusing the %s of run %s", run_cfg.crm.name, run_id)
    return crm


def save_crm(crm: CRM, folder: Path) -> Path:
    """Write `crm.pt` (name, the CRM's config and weights) into FOLDER; `load_crm_file` reads it back."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / CRM_FILE
    cfg = OmegaConf.to_container(crm.cfg, resolve=True) if OmegaConf.is_config(crm.cfg) else dict(vars(crm.cfg))
    torch.save({"name": crm.cfg.name, "config": cfg, "state_dict": crm.state_dict()}, file)
    return file


def load_crm_file(folder: Path, crm_cfg, data, device: str) -> CRM:
    """Rebuild a CRM from FOLDER/crm.pt (written by `save_crm` or a baseline run) for DATA, in eval mode."""
    state = torch.load(Path(folder) / CRM_FILE, map_location=device, weights_only=False)
    if crm_cfg is None:
        crm_cfg = OmegaConf.create(state["config"])
    if state.get("name") not in (None, crm_cfg.name):
        raise LlmrecError(f"{folder}/{CRM_FILE} holds a {state['name']} CRM, expected {crm_cfg.name}")
    crm = build_crm(crm_cfg, data.n_users, data.n_items, device)
    crm.setup(data)
    crm.load_state_dict(state["state_dict"])
    crm.eval()
    return crm
