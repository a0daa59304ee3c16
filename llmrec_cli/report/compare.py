"""Build the comparison behind `llmrec compare`: one row per group, aggregated over seeds, tested vs a reference.

A row holds the group (quadrant, method, model, crm, dataset and its label), run counts per status, the
most common error of its failed runs, and per metric {n, mean, std, ci95, p, significant, delta} where only
FINISHED runs enter the statistics. Groups whose runs all failed still get a row.

The reference is chosen per dataset: `--baseline NAME` (a group label, a CRM or method name, or a run id),
else the "sasrec" baseline when it has finished runs, else the best group on the first metric.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from llmrec_cli.errors import ConfigError, LlmrecError
from llmrec_cli.report.select import STATUSES, Selection, add_groups, column, filter_runs, group_sort_key

DEFAULT_METRICS = ("test/full/ndcg_10", "test/full/hr_10", "test/sampled/ndcg_10", "test/pointwise/auc")
LOWER_IS_BETTER = ("logloss", "loss", "seconds")
ALPHA = 0.05
PER_USER_ARTIFACT = "per_user_metrics.parquet"


@dataclass
class Comparison:
    rows: list[dict]
    metrics: list[str]
    runs: object  # the selected runs (DataFrame) with group columns
    test: str
    uri: str = ""
    notes: list[str] = field(default_factory=list)


def higher_is_better(metric: str) -> bool:
    return not any(word in metric.rsplit("/", 1)[-1] for word in LOWER_IS_BETTER)


def abbreviate(text: str, width: int = 48) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def run_costs(runs):
    """Per-run cost in seconds per 1,000 users: `cost/gpu_seconds` when logged, else fit + eval seconds."""
    import pandas as pd

    fit = pd.to_numeric(column(runs, "metrics.time/fit_seconds"), errors="coerce")
    ev = pd.to_numeric(column(runs, "metrics.time/eval_seconds"), errors="coerce")
    seconds = pd.concat([fit, ev], axis=1).sum(axis=1, min_count=1)
    gpu = pd.to_numeric(column(runs, "metrics.cost/gpu_seconds"), errors="coerce")
    seconds = gpu.where(gpu.notna(), seconds)
    users = pd.to_numeric(column(runs, "tags.n_users"), errors="coerce")
    return seconds / users * 1000.0


def run_num_parameters(runs):
    """Per-run LLM parameter count from param, tag or metric `model.num_parameters` (NaN when absent)."""
    import pandas as pd

    out = pd.Series(math.nan, index=runs.index, dtype=float)
    for col in ("params.model.num_parameters", "tags.model.num_parameters", "metrics.model.num_parameters"):
        out = out.fillna(pd.to_numeric(column(runs, col), errors="coerce"))
    return out


def aggregate(runs, metrics: list[str]) -> list[dict]:
    """One row per group with status counts, error summary, cost, size and per-metric summaries."""
    import pandas as pd

    from llmrec_cli.report.stats import summarize

    runs = runs if "group" in runs.columns else add_groups(runs)
    costs, sizes = run_costs(runs), run_num_parameters(runs)
    rows = []
    for (label, dataset), g in runs.groupby(["group", "dataset"], sort=False):
        done = g[g["status"] == "FINISHED"]
        counts = {s.lower(): int((g["status"] == s).sum()) for s in STATUSES}
        errors = column(g, "tags.error").dropna()
        error = ""
        if len(errors):
            text, k = Counter(errors.astype(str)).most_common(1)[0]
            error = abbreviate(text) + (f" (+{len(errors) - k} other)" if len(errors) > k else "")
        first = g.iloc[0]
        row = {
            "group": label, "dataset": dataset,
            **{k: first[k] for k in ("quadrant", "method", "model", "crm")},
            "runs": counts, "error": error,
            "run_ids": list(g["run_id"]), "finished_run_ids": list(done["run_id"]),
            "num_parameters": _nan_to_none(sizes.loc[done.index].median()) if len(done) else None,
            "cost_per_1k_users": _nan_to_none(costs.loc[done.index].mean()) if len(done) else None,
            "reference": None, "is_reference": False, "metrics": {},
        }
        for m in metrics:
            values = pd.to_numeric(column(done, f"metrics.{m}"), errors="coerce").tolist()
            row["metrics"][m] = {**summarize(values), "p": math.nan, "significant": False, "delta": math.nan,
                                 "n_users": 0}
        rows.append(row)
    rows.sort(key=lambda r: group_sort_key(r["quadrant"], r["crm"], r["group"], r["dataset"]))
    return rows


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _best(rows: list[dict], metric: str) -> dict | None:
    scored = [r for r in rows if r["metrics"].get(metric, {}).get("n", 0) > 0]
    if not scored:
        return None
    sign = 1 if higher_is_better(metric) else -1
    return max(scored, key=lambda r: sign * r["metrics"][metric]["mean"])


def choose_references(rows: list[dict], runs, baseline: str | None, metric: str) -> dict[str, str]:
    """{dataset: label of the reference group}; see the module docstring for the rules."""
    by_dataset: dict[str, list[dict]] = {}
    for r in rows:
        by_dataset.setdefault(r["dataset"], []).append(r)
    refs: dict[str, str] = {}
    if baseline and len(runs) and baseline in set(runs["run_id"]):
        hit = runs[runs["run_id"] == baseline].iloc[0]
        return {hit["dataset"]: hit["group"]}
    for dataset, group_rows in by_dataset.items():
        alive = [r for r in group_rows if r["runs"]["finished"] > 0]
        if baseline:
            ranked = ([r for r in alive if r["group"] == baseline]
                      + [r for r in alive if r["crm"] == baseline and r["quadrant"] == "baseline"]
                      + [r for r in alive if r["crm"] == baseline or r["method"] == baseline])
            if ranked:
                refs[dataset] = ranked[0]["group"]
            continue
        sasrec = [r for r in alive if r["group"] == "sasrec"]
        best = sasrec[0] if sasrec else _best(alive, metric)
        if best is not None:
            refs[dataset] = best["group"]
    if baseline and not refs:
        labels = sorted({r["group"] for r in rows})
        raise LlmrecError(f"--baseline {baseline!r} matches no group with finished runs (nor a run id); "
                          f"groups: {', '.join(labels)}")
    return refs


def add_significance(rows: list[dict], refs: dict[str, str], metrics: list[str], test: str,
                     per_user: Callable[[str], object]) -> None:
    """Fill p, significant and delta of every row against its dataset's reference (in place).

    `per_user(run_id)` returns that run's per_user_metrics frame or None (injected, so tests need no MLflow).
    """
    from llmrec_cli.report.stats import paired_pvalue, parse_metric

    index = {(r["dataset"], r["group"]): r for r in rows}
    testable = [m for m in metrics if parse_metric(m) is not None]
    for r in rows:
        ref = index.get((r["dataset"], refs.get(r["dataset"])))
        if ref is None:
            continue
        r["reference"] = ref["group"]
        r["is_reference"] = ref is r
        for m in metrics:
            mine, theirs = r["metrics"][m], ref["metrics"][m]
            if r["is_reference"] or mine["n"] == 0:
                continue
            mine["delta"] = mine["mean"] - theirs["mean"]
            if m in testable and test != "none":
                frames_a = [per_user(i) for i in r["finished_run_ids"]]
                frames_b = [per_user(i) for i in ref["finished_run_ids"]]
                p, n_users = paired_pvalue(frames_a, frames_b, m, test)
                mine.update(p=p, n_users=n_users, significant=bool(p < ALPHA) if not math.isnan(p) else False)


def build_comparison(uri: str, sel: Selection, metrics: list[str] | None = None, baseline: str | None = None,
                     test: str = "ttest") -> Comparison:
    """Load the runs from MLflow, select, aggregate, pick the references and run the paired tests."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from llmrec_cli import tracking
    from llmrec_cli.report.stats import TESTS

    if test not in TESTS:
        raise ConfigError(f"unknown --test {test!r}; use one of {', '.join(TESTS)}")
    metrics = list(metrics or DEFAULT_METRICS)
    everything = tracking.search_runs(uri, sel.experiments or None)
    if len(everything) == 0:
        raise LlmrecError(f"no runs in {uri}: run `llmrec train ...` or `llmrec sweep ...` first")
    runs, notes = filter_runs(everything, sel)
    if len(runs) == 0:
        raise LlmrecError(f"no runs match the selection ({sel.describe()}) in {uri}")
    runs = add_groups(runs)
    unknown = [m for m in metrics if f"metrics.{m}" not in runs.columns]
    if len(unknown) == len(metrics) and runs["status"].eq("FINISHED").any():
        raise LlmrecError(f"no run logged {', '.join(unknown)}; metric names look like test/full/ndcg_10")
    notes += [f"metric {m} was not logged by any selected run" for m in unknown]
    rows = aggregate(runs, metrics)
    refs = choose_references(rows, runs, baseline, metrics[0])
    cache: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="llmrec-compare-") as tmp:
        def per_user(run_id: str):
            if run_id not in cache:
                path = tracking.download_artifact(uri, run_id, PER_USER_ARTIFACT, Path(tmp) / run_id)
                cache[run_id] = pd.read_parquet(path) if path is not None and path.is_file() else None
            return cache[run_id]

        add_significance(rows, refs, metrics, test, per_user)
    return Comparison(rows=rows, metrics=metrics, runs=runs, test=test, uri=uri, notes=notes)
