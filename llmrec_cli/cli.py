"""The `llmrec` command line. Thin: parse options, compose the config, call a pipeline.

Overrides use Hydra grammar (key=value, +key=value, ~key) and come after the command's options.
Heavy libraries (torch, transformers, mlflow) are imported inside commands, so `llmrec --help` is instant.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from llmrec_cli.errors import LlmrecError

OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
app = typer.Typer(
    name="llmrec",
    help="Run LLM-enhanced recommenders (four quadrants + CRM baselines) on one split and one candidate set, "
    "tracked in MLflow. Overrides use Hydra grammar: key=value, +key=value, ~key.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rendering it with rich costs ~120 ms of imports per --help
)
data_app = typer.Typer(help="Prepare datasets and show their statistics.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(data_app, name="data")
runs_app = typer.Typer(help="List runs with their real state; `llmrec runs gc` marks ghost runs KILLED.",
                       rich_markup_mode=None, invoke_without_command=True)
app.add_typer(runs_app, name="runs")
report_app = typer.Typer(help="Write report pages from MLflow runs (docs/reproduction.md).", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(report_app, name="report")


def _compose(args: list[str]):
    from llmrec_cli.config.compose import compose_run

    return compose_run(args)


def _console():
    from rich.console import Console

    return Console()


@app.command(context_settings=OVERRIDES)
def train(ctx: typer.Context) -> None:
    """Train and evaluate one run: llmrec train quadrant=baseline crm=sasrec dataset=ml-100k seed=0"""
    cfg = _compose(ctx.args)
    _openmp_wait_policy(cfg)
    from llmrec_cli.pipelines.train import run_train

    summary = run_train(cfg)
    if summary.tracking_uri:  # empty on the non-zero ranks of a multi-process run: rank 0 reports
        _print_results(summary)


def _openmp_wait_policy(cfg) -> None:
    """Before torch loads OpenMP (which reads this once): CRM-only runs wait PASSIVE, so idle threads sleep
    instead of spinning on cores other processes need (SASRec on ML-100K beside a busy process: 5.2 s an epoch
    instead of 7.2 s, the same alone); LLM runs keep OpenMP's spinning default, which scores 13-24% more tokens
    per second alone (scripts/bench_crm.py --thread-matrix, scripts/bench_llm.py). OMP_WAIT_POLICY wins."""
    if cfg.method.name == "baseline" and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@app.command(context_settings=OVERRIDES)
def sweep(
    ctx: typer.Context,
    multirun: bool = typer.Option(True, "-m", "--multirun", help="Hydra's multirun flag (implied)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List and compose every job, print the launcher "
                                 "settings, run nothing."),
) -> None:
    """Sweep a grid: llmrec sweep -m quadrant=baseline crm=pop,bpr,sasrec seed=0,1,2 launcher=joblib"""
    from llmrec_cli.pipelines import sweep as sw

    overrides = [o for o in ctx.args if o not in ("-m", "--multirun")]
    if dry_run:
        jobs, errors, launcher = sw.dry_run(overrides)
        for num, job in enumerate(jobs):
            typer.echo(f"{num:>3}  {' '.join(job)}")
        typer.echo(f"launcher: {launcher}")
        for err in errors:
            typer.echo(f"error: {err}", err=True)
        typer.echo(f"{len(jobs)} jobs, {len(errors)} with config errors")
        raise typer.Exit(2 if errors else 0)
    parent, statuses = sw.run_sweep(overrides)
    typer.echo(sw.format_status(statuses))
    typer.echo(f"sweep parent run {parent}  (llmrec compare --parent {parent})")
    if any(s.returncode != 0 for s in statuses):
        raise typer.Exit(1)


@app.command("eval", context_settings=OVERRIDES)
def eval_(
    ctx: typer.Context,
    run: str | None = typer.Option(None, "--run", help="MLflow run id of a finished run to re-evaluate."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="A run's local checkpoint folder."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow store (default: "
                                               "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)."),
) -> None:
    """Re-evaluate a finished run or checkpoint (overrides: eval.*, e.g. eval.num_negatives=99)."""
    if (run is None) == (checkpoint is None):
        raise LlmrecError("give exactly one of --run RUN_ID or --checkpoint DIR")
    from llmrec_cli.pipelines.evaluate import run_eval

    _print_results(run_eval(run, checkpoint, list(ctx.args), tracking_uri))


@data_app.command("prepare", context_settings=OVERRIDES)
def data_prepare(ctx: typer.Context, force: bool = typer.Option(False, "--force", help="Ignore the cache.")) -> None:
    """Read, filter, k-core and split a dataset into the cache: llmrec data prepare dataset=ml-1m"""
    cfg = _compose(ctx.args)
    from llmrec_cli.data.candidates import get_plan
    from llmrec_cli.data.load import load_prepared
    from llmrec_cli.data.prepare import cache_path

    data = load_prepared(cfg.dataset, force=force)
    plan = get_plan(data, cfg.eval, int(cfg.seed))
    typer.echo(f"dataset={data.name}: {data.n_users:,} users, {data.n_items:,} items -> {cache_path(data.key)}")
    typer.echo(f"dataset hash {data.data_hash}, candidate-set hash {plan.hash} (seed={cfg.seed})")


@data_app.command("info", context_settings=OVERRIDES)
def data_info(ctx: typer.Context) -> None:
    """Raw and prepared counts, density, sequence-length quantiles: llmrec data info dataset=ml-100k"""
    cfg = _compose(ctx.args)
    from rich.table import Table

    from llmrec_cli.data.load import load_prepared

    data = load_prepared(cfg.dataset)
    raw, prep = data.stats["raw"], data.stats["prepared"]
    table = Table(title=f"dataset={data.name} (min_rating={cfg.dataset.min_rating}, kcore={cfg.dataset.kcore})")
    for col in ("", "users", "items", "interactions", "density"):
        table.add_column(col, justify="right" if col else "left")
    for name, s in (("raw", raw), ("prepared", prep)):
        table.add_row(name, f"{s['users']:,}", f"{s['items']:,}", f"{s['interactions']:,}", f"{s['density']:.4%}")
    console = _console()
    console.print(table)
    q = prep["seq_len_quantiles"]
    console.print("sequence length quantiles (per user): " + ", ".join(f"q{float(k):g}={v:g}" for k, v in q.items()))
    console.print(_split_table(data, cfg.dataset))
    console.print(f"dataset hash {data.data_hash}; files: " + ", ".join(Path(p).name for p in data.stats["files"]))


def _split_table(data, dataset_cfg):
    """Both splits side by side (training interactions, evaluated users), the run's one marked."""
    from datetime import datetime, timezone

    from rich.table import Table

    from llmrec_cli.data.splits import split_positions, split_stats

    qs = tuple(dataset_cfg.get("split_time") or (0.8, 0.9))
    table = Table(title="splits (dataset.split=loo|temporal; * = this config's, part of the dataset hash)",
                  caption=f"loo: each user's last item is the test target, the second last the valid target (ties: "
                          f"file order). temporal: train before the q{qs[0]:g} time quantile; targets are each "
                          f"user's first item after the q{qs[0]:g} and q{qs[1]:g} cuts (dataset.split_time); "
                          f"users without training data are not evaluated.", caption_justify="left")
    for col in ("split", "train interactions", "users with training", "valid users", "test users", "cut"):
        table.add_column(col, justify="left" if col in ("split", "cut") else "right")
    for method in ("loo", "temporal"):
        name = f"{method}{' *' if method == data.split else ''}"
        if method == "temporal" and not data.stats.get("has_time", True):
            table.add_row(name, "—", "—", "—", "—", "no timestamps: unavailable")
            continue
        *pos, info = split_positions(data.offsets, data.seq_times, method, qs)
        st = split_stats(*pos)
        if method == "loo":
            cut = "per user: last, 2nd last"
        else:
            def day(t):
                return datetime.fromtimestamp(int(t), tz=timezone.utc).strftime("%Y-%m-%d") \
                    if int(t) > 10**8 else str(int(t))
            cut = f"{day(info['t_valid'])}, {day(info['t_test'])}"
        table.add_row(name, f"{st['train_interactions']:,}", f"{st['users_with_training']:,}",
                      f"{st['valid_users']:,}", f"{st['test_users']:,}", cut)
    return table


@app.command("config", context_settings=OVERRIDES)
def config_(ctx: typer.Context) -> None:
    """Print the composed, resolved config: llmrec config quadrant=baseline crm=bpr"""
    from omegaconf import OmegaConf

    typer.echo(OmegaConf.to_yaml(_compose(ctx.args), resolve=True), nl=False)


@app.command()
def validate(
    full: bool = typer.Option(False, "--all", help="Every method x CRM x model triple (slower), not only every "
                                                   "pair of them."),
) -> None:
    """Compose every registered combination and report all errors at once."""
    from llmrec_cli.config.validate import validate_all

    errors, count = validate_all(full)
    for err in errors:
        typer.echo(f"error: {err}", err=True)
    typer.echo(f"validated {count} compositions: {len(errors)} error(s)")
    if errors:
        raise typer.Exit(2)


@app.command("ls")
def ls() -> None:
    """List datasets, quadrants, methods, CRMs, models and experiment presets."""
    import shutil
    import textwrap

    from llmrec_cli.config.validate import catalogue

    width = max(80, shutil.get_terminal_size((120, 24)).columns)
    for group, rows in catalogue().items():
        typer.echo(group)
        for name, desc in rows:
            typer.echo(textwrap.fill(desc, width=width, initial_indent=f"  {name:<22} ",
                                     subsequent_indent=" " * 25))


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(5000, help="Port to listen on."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow store (default: "
                                               "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)."),
) -> None:
    """Start the MLflow UI on the llmrec store."""
    from llmrec_cli.tracking import resolve_uri

    uri = resolve_uri(tracking_uri)
    typer.echo(f"MLflow UI for {uri} at http://{host}:{port}")
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.exists() else "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    os.execvp(cmd[0], cmd)


_EXPERIMENT = typer.Option(None, "--experiment", "-e", help="MLflow experiment name (repeatable; default: all).")
_PARENT = typer.Option(None, "--parent", help="Only the children of this sweep parent run.")
_DATASET = typer.Option(None, "--dataset", help="Only these datasets (repeatable or comma-separated).")
_TAG = typer.Option(None, "--tag", help="Only runs with tag KEY=VALUE (repeatable).")
_STATUS = typer.Option(None, "--status", help="Only runs with this status: FINISHED, FAILED, KILLED, RUNNING "
                       "(repeatable; default: all are shown, only FINISHED runs enter the statistics).")
_METRIC = typer.Option(None, "--metric", help="Metric to compare (repeatable; default: test/full/ndcg_10, "
                       "test/full/hr_10, test/sampled/ndcg_10, test/pointwise/gauc, test/like/auc). The first one "
                       "ranks. {split}/pointwise/gauc is per-user AUC averaged over users (paired test); "
                       "{split}/pointwise/auc and {split}/like/auc are pooled AUCs (no paired test).")
_BASELINE = typer.Option(None, "--baseline", help="Reference: a group label, CRM or method name, or a run id "
                         "(default: sasrec, else the best group on the first metric).")
_TEST = typer.Option("ttest", "--test", help="Paired test on per-user metrics (only runs on the same candidate "
                     "set are paired): ttest, permutation or none.")
_CORRECTION = typer.Option("holm", "--correction", help="Multiple-comparison correction of the paired tests, per "
                           "metric and reference: holm (family-wise), bh (Benjamini-Hochberg FDR) or none.")
_REEVALS = typer.Option(False, "--include-reevals", help="Include `llmrec eval` re-evaluations (source_run).")
_DUPLICATES = typer.Option(False, "--keep-duplicates", help="Count every run: reruns and resumes of one "
                           "configuration and seed are otherwise collapsed to the newest FINISHED one.")
_LOG_TO_RUN = typer.Option(None, "--log-to-run", help="Also log the PNGs to this MLflow run "
                           "(default: $LLMREC_PARENT_RUN_ID when set).")
_TRACKING_URI = typer.Option(None, "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, "
                             "else sqlite:///mlflow.db here).")


def _comparison(tracking_uri, experiment, parent, dataset, tag, status, metric, baseline, test, include_reevals,
                correction="holm", keep_duplicates=False):
    from llmrec_cli.report.compare import build_comparison
    from llmrec_cli.report.select import Selection, parse_tag_filters, split_list
    from llmrec_cli.runs import gc_note
    from llmrec_cli.tracking import resolve_uri

    sel = Selection(experiments=split_list(experiment), parent=parent, dataset=split_list(dataset),
                    tags=parse_tag_filters(tag), statuses=split_list(status), include_reevals=include_reevals,
                    keep_duplicates=keep_duplicates)
    uri = resolve_uri(tracking_uri)
    ghosts = gc_note(uri)
    if ghosts:
        typer.echo(f"note: {ghosts}", err=True)
    comp = build_comparison(uri, sel, split_list(metric), baseline, test, correction)
    for note in comp.notes:
        typer.echo(f"note: {note}", err=True)
    return comp


def _plots(comp, directory: Path, log_to_run: str | None) -> None:
    from llmrec_cli.report.plots import left_out_protocols, plot_protocols, write_plots

    left_out = left_out_protocols(comp.rows)
    if left_out:
        shown = {r["protocol"] for r in comp.rows if plot_protocols(comp.rows)[r["dataset"]] == r["protocol_hash"]}
        typer.echo(f"note: plots show one protocol per dataset ({'; '.join(sorted(shown))}); left out: "
                   f"{'; '.join(left_out)} (select one with --tag protocol_hash=...)", err=True)
    paths = write_plots(comp, directory)
    typer.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
    run_id = log_to_run or os.environ.get("LLMREC_PARENT_RUN_ID")
    if run_id:
        from llmrec_cli.tracking import log_files

        log_files(comp.uri, run_id, paths, "compare")
        typer.echo(f"logged {len(paths)} plot(s) to run {run_id} (artifacts/compare)", err=True)


@app.command()
def compare(
    experiment: list[str] | None = _EXPERIMENT, parent: str | None = _PARENT, dataset: list[str] | None = _DATASET,
    tag: list[str] | None = _TAG, status: list[str] | None = _STATUS, metric: list[str] | None = _METRIC,
    baseline: str | None = _BASELINE, test: str = _TEST, correction: str = _CORRECTION,
    include_reevals: bool = _REEVALS, keep_duplicates: bool = _DUPLICATES,
    fmt: str = typer.Option("table", "--format", "-f", help="table, markdown, csv or json (a list of rows)."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write the PNG plots into this folder."),
    log_to_run: str | None = _LOG_TO_RUN, tracking_uri: str | None = _TRACKING_URI,
) -> None:
    """Compare groups of runs over seeds: mean ± 95% CI, paired tests vs a reference: llmrec compare --parent ID"""
    from llmrec_cli.report.render import FORMATS, render

    if fmt not in FORMATS:
        from llmrec_cli.errors import ConfigError

        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    comp = _comparison(tracking_uri, experiment, parent, dataset, tag, status, metric, baseline, test,
                       include_reevals, correction, keep_duplicates)
    out = render(comp, fmt)
    if isinstance(out, str):
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    else:
        from rich.console import Console

        console = Console()
        (console if console.is_terminal else Console(width=200)).print(out)
    if plot is not None:
        _plots(comp, plot, log_to_run)


@app.command()
def plot(
    directory: Path = typer.Argument(..., help="Folder for quadrant_map.png and pareto.png."),
    experiment: list[str] | None = _EXPERIMENT, parent: str | None = _PARENT, dataset: list[str] | None = _DATASET,
    tag: list[str] | None = _TAG, status: list[str] | None = _STATUS, metric: list[str] | None = _METRIC,
    baseline: str | None = _BASELINE, include_reevals: bool = _REEVALS, keep_duplicates: bool = _DUPLICATES,
    log_to_run: str | None = _LOG_TO_RUN, tracking_uri: str | None = _TRACKING_URI,
) -> None:
    """Write the quadrant map and the quality-vs-cost Pareto plot as PNGs: llmrec plot plots/ --parent ID"""
    comp = _comparison(tracking_uri, experiment, parent, dataset, tag, status, metric, baseline, "none",
                       include_reevals, keep_duplicates=keep_duplicates)
    _plots(comp, directory, log_to_run)


@report_app.command("reproduction")
def report_reproduction(
    out: Path = typer.Option(Path("docs/reproduction.md"), "--out", "-o", help="The page to write (atomically)."),
    experiment: list[str] | None = _EXPERIMENT,
    unified: list[str] | None = typer.Option(None, "--unified-dataset", help="Datasets whose CRM baselines under the "
                                             "unified protocol get their own table (repeatable; default ml-100k)."),
    tracking_uri: str | None = _TRACKING_URI,
) -> None:
    """Published numbers (paper, source) beside llmrec's mean ± 95% CI under each paper's protocol."""
    from llmrec_cli import runs
    from llmrec_cli.report.reproduction import write_reproduction
    from llmrec_cli.report.select import split_list
    from llmrec_cli.tracking import require_store, resolve_uri

    uri = require_store(resolve_uri(tracking_uri))
    note = runs.gc_note(uri)
    if note:
        typer.echo(note, err=True)
    datasets = tuple(split_list(unified)) or ("ml-100k",)
    write_reproduction(uri, out, split_list(experiment) or None, datasets)
    typer.echo(f"wrote {out}", err=True)


_MAX_AGE = typer.Option(30.0, "--max-age", help="Minutes without a heartbeat after which a RUNNING run from any "
                        "host is a ghost (runs of this host are checked by process id at once).")


@runs_app.callback()
def runs_(
    ctx: typer.Context,
    experiment: list[str] | None = _EXPERIMENT,
    status: list[str] | None = typer.Option(None, "--status", help="Only runs stored with this status (repeatable)."),
    limit: int = typer.Option(50, "--limit", help="Newest runs shown."),
    max_age: float = _MAX_AGE, tracking_uri: str | None = _TRACKING_URI,
) -> None:
    """List runs, newest first, with their real state (RUNNING, or ghost: its process is gone)."""
    if ctx.invoked_subcommand is not None:
        return
    import datetime as dt

    from llmrec_cli import runs
    from llmrec_cli.report.select import split_list
    from llmrec_cli.tracking import require_store, resolve_uri

    uri = require_store(resolve_uri(tracking_uri))
    states = runs.list_runs(uri, split_list(experiment), [s.upper() for s in split_list(status)],
                            max_age * 60, limit)
    typer.echo(f"{'run id':<32}  {'state':<8}  {'started (UTC)':<16}  {'heartbeat':>9}  {'host:pid':<24}  name")
    for s in states:
        started = dt.datetime.fromtimestamp(s.start_time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        beat = f"{s.heartbeat_age / 60:.0f} min" if s.heartbeat_age is not None and s.status == "RUNNING" else ""
        typer.echo(f"{s.run_id:<32}  {s.state:<8}  {started:<16}  {beat:>9}  {s.where:<24}  {s.name}"
                   + (f"  ({s.reason})" if s.reason else ""))
    ghosts = sum(s.state == "ghost" for s in states)
    typer.echo(f"{len(states)} run(s) in {uri}" + (f"; {ghosts} ghost(s): `llmrec runs gc` marks them KILLED"
                                                  if ghosts else ""))


@runs_app.command("gc")
def runs_gc(
    max_age: float = _MAX_AGE, tracking_uri: str | None = _TRACKING_URI,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list the ghosts."),
) -> None:
    """Mark RUNNING runs whose process is gone (this host) or whose heartbeat is stale as KILLED, with the reason."""
    from llmrec_cli import runs
    from llmrec_cli.tracking import require_store, resolve_uri

    uri = require_store(resolve_uri(tracking_uri))
    ghosts = runs.gc(uri, max_age * 60, dry_run=dry_run)
    for g in ghosts:
        typer.echo(f"{g.run_id}  {g.name}: {g.reason}")
    typer.echo(f"{'found' if dry_run else 'marked KILLED'}: {len(ghosts)} ghost run(s) in {uri}")


def _print_results(summary) -> None:
    from rich.table import Table

    m = summary.metrics
    table = Table(title=f"{summary.run_name}  (run {summary.run_id})")
    cols = ["hr_10", "ndcg_10", "mrr_10", "gauc", "auc"]  # every metric is in MLflow
    table.add_column("split/protocol", no_wrap=True)
    for c in [*cols, "users"]:
        table.add_column(c, justify="right")
    for split in ("valid", "test"):
        for proto in ("sampled", "full", "pointwise", "like"):
            key = f"{split}/{proto}"
            if not any(k.startswith(key + "/") for k in m):
                continue
            vals = [f"{m[f'{key}/{c}']:.4f}" if f"{key}/{c}" in m else "" for c in cols]
            users = m.get(f"{key}/n_users")  # users, never rows (pointwise/like have several rows per user)
            table.add_row(key, *vals, f"{users:.0f}" if users else "")
    console = _console()
    if not console.is_terminal:  # a log or a pipe: rich's default 80 columns would fold the first column
        from rich.console import Console

        console = Console(width=160)
    console.print(table)
    fit = {k: v for k, v in m.items() if k.startswith(("fit/", "time/", "cost/"))}
    if fit:
        console.print("  ".join(f"{k}={v:.4g}" for k, v in fit.items()))
    console.print(f"tracking: {summary.tracking_uri}  (compare runs: llmrec compare; browse: llmrec ui)")


def main() -> None:
    """Console entry point: user errors print one line and exit non-zero, without a traceback."""
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except LlmrecError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        if not getattr(exc, "reported", False):  # a run's interruption already printed its line
            typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's own usage errors and unexpected failures
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if os.environ.get("LLMREC_DEBUG") == "1":
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        typer.echo(f"error: {type(exc).__name__}: {msg} (LLMREC_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
