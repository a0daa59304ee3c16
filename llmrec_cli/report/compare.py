"""Build the comparison behind `llmrec compare`: one row per group, aggregated over seeds, tested vs a reference.

A row is one group on one protocol (see select.py): runs on two protocols (e.g. 20 candidates for every user vs
100 candidates for 200 users) are two rows, never one mean. A row holds the group (quadrant, method, model,
crm, dataset and its label), the protocol (`protocol` label, `protocol_hash`), the evaluated users (`users`)
and sampled candidates per user (`cands`), run counts per status, the most common error of its failed runs, and
per metric {n, mean, std, ci95, p_raw, p, significant, delta, n_users, n_candidate_sets} where only FINISHED runs
enter the statistics. Groups whose runs all failed still get a row.

The reference is chosen per (dataset, protocol): `--baseline NAME` (a group label, a CRM or method name, or a
run id), else the "sasrec" baseline when it has finished runs, else the best group on the first metric. The
paired test of a row pairs only runs on a candidate set (`candidate_set_hash`) both it and its reference have;
with none in common the row is not tested (p NaN) and a note says so, and a note says how many sets were paired
where only some are shared. The raw p-values (`p_raw`) of one metric against one reference are a family,
adjusted together (`--correction`: holm, bh or none) into `p`; `significant` is the adjusted p < 0.05.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from llmrec_cli.errors import ConfigError, LlmrecError
from llmrec_cli.report.select import (
    STATUSES,
    Selection,
    add_groups,
    collapse_duplicates,
    column,
    common_count,
    filter_runs,
    group_sort_key,
    seed_list,
)

DEFAULT_METRICS = ("test/full/ndcg_10", "test/full/hr_10", "test/sampled/ndcg_10", "test/pointwise/gauc",
                   "test/like/auc")
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
    correction: str = "holm"


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
    """One row per (group, dataset, protocol) with status counts, error summary, cost, size, the protocol with
    its user and candidate counts, and per-metric summaries; seeds are averaged only within a protocol."""
    import pandas as pd

    from llmrec_cli.report.stats import summarize

    runs = runs if "group" in runs.columns else add_groups(runs)
    costs, sizes = run_costs(runs), run_num_parameters(runs)
    rows = []
    for (label, dataset, phash), g in runs.groupby(["group", "dataset", "protocol_hash"], sort=False):
        done = g[g["status"] == "FINISHED"]
        counted = done if len(done) else g
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
            "protocol": first["protocol"], "protocol_hash": phash,
            "users": common_count(counted["n_eval_users"]), "cands": common_count(counted["n_candidates"]),
            "runs": counts, "error": error,
            "run_ids": list(g["run_id"]), "finished_run_ids": list(done["run_id"]),
            "finished_candidate_sets": list(done["candidate_set_hash"]), "finished_seeds": list(done["seed"]),
            "num_parameters": _nan_to_none(sizes.loc[done.index].median()) if len(done) else None,
            "cost_per_1k_users": _nan_to_none(costs.loc[done.index].mean()) if len(done) else None,
            "reference": None, "is_reference": False, "metrics": {},
        }
        for m in metrics:
            values = pd.to_numeric(column(done, f"metrics.{m}"), errors="coerce").tolist()
            row["metrics"][m] = {**summarize(values), "p_raw": math.nan, "p": math.nan, "significant": False,
                                 "delta": math.nan, "n_users": 0, "n_candidate_sets": 0}
        rows.append(row)
    rows.sort(key=lambda r: group_sort_key(r["quadrant"], r["crm"], r["group"], r["dataset"], r["protocol"]))
    return rows


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _best(rows: list[dict], metric: str) -> dict | None:
    scored = [r for r in rows if r["metrics"].get(metric, {}).get("n", 0) > 0]
    if not scored:
        return None
    sign = 1 if higher_is_better(metric) else -1
    return max(scored, key=lambda r: sign * r["metrics"][metric]["mean"])


def choose_references(rows: list[dict], runs, baseline: str | None, metric: str) -> dict[tuple[str, str], str]:
    """{(dataset, protocol_hash): label of the reference group}; see the module docstring for the rules."""
    by_protocol: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_protocol.setdefault((r["dataset"], r["protocol_hash"]), []).append(r)
    refs: dict[tuple[str, str], str] = {}
    if baseline and len(runs) and baseline in set(runs["run_id"]):
        hit = runs[runs["run_id"] == baseline].iloc[0]
        return {(hit["dataset"], hit["protocol_hash"]): hit["group"]}
    for key, group_rows in by_protocol.items():
        alive = [r for r in group_rows if r["runs"]["finished"] > 0]
        if baseline:
            ranked = ([r for r in alive if r["group"] == baseline]
                      + [r for r in alive if r["crm"] == baseline and r["quadrant"] == "baseline"]
                      + [r for r in alive if r["crm"] == baseline or r["method"] == baseline])
            if ranked:
                refs[key] = ranked[0]["group"]
            continue
        sasrec = [r for r in alive if r["group"] == "sasrec"]
        best = sasrec[0] if sasrec else _best(alive, metric)
        if best is not None:
            refs[key] = best["group"]
    if baseline and not refs:
        labels = sorted({r["group"] for r in rows})
        raise LlmrecError(f"--baseline {baseline!r} matches no group with finished runs (nor a run id); "
                          f"groups: {', '.join(labels)}")
    return refs


def shared_candidate_sets(row: dict, ref: dict) -> list[str]:
    """The candidate sets (candidate_set_hash) both groups' finished runs were measured on, sorted."""
    mine = {s for s in row["finished_candidate_sets"] if s is not None}
    return sorted(mine & {s for s in ref["finished_candidate_sets"] if s is not None})


def _seeds(row: dict, keep: Callable[[str | None], bool]) -> str:
    return seed_list(seed for seed, cs in zip(row["finished_seeds"], row["finished_candidate_sets"], strict=True)
                     if keep(cs))


def pairing_note(row: dict, ref: dict, shared: list[str]) -> str | None:
    """One line when the row's paired test cannot use all its runs: none share a candidate set with the reference
    (not tested), or only some do (how many sets were paired, which seeds were left out); None otherwise."""
    head = f"{row['group']} vs {ref['group']} ({row['protocol']})"
    if not shared:
        return (f"{head}: not paired, their runs share no candidate set "
                f"(seeds {_seeds(row, lambda cs: True)} vs {_seeds(ref, lambda cs: True)})")
    left_a, left_b = _seeds(row, lambda cs: cs not in shared), _seeds(ref, lambda cs: cs not in shared)
    if not left_a and not left_b:
        return None
    sets = "set" if len(shared) == 1 else "sets"
    return (f"{head}: paired on {len(shared)} candidate {sets} shared with the reference "
            f"(seeds {_seeds(row, lambda cs: cs in shared)}); left out: seeds {left_a or 'none'} vs {left_b or 'none'}")


def _matched(row: dict, shared: list[str], per_user: Callable[[str], object]) -> tuple[list, list]:
    """(per-user frames, their candidate sets) of the row's finished runs on the shared candidate sets."""
    pairs = [(per_user(i), cs) for i, cs in zip(row["finished_run_ids"], row["finished_candidate_sets"], strict=True)
             if cs in shared]
    return [f for f, _ in pairs], [cs for _, cs in pairs]


def add_significance(rows: list[dict], refs: dict[tuple[str, str], str], metrics: list[str], test: str,
                     per_user: Callable[[str], object], correction: str = "holm") -> list[str]:
    """Fill delta, p_raw, p (adjusted), significant, n_users and n_candidate_sets of every row against the
    reference of its (dataset, protocol), in place; returns the notes on rows paired on fewer runs than they have.

    `per_user(run_id)` returns that run's per_user_metrics frame or None (injected, so tests need no MLflow).
    Only runs on candidate sets both groups have are paired; see the module docstring.
    """
    from llmrec_cli.report.stats import check_correction, paired_pvalue, parse_metric

    check_correction(correction)
    index = {(r["dataset"], r["protocol_hash"], r["group"]): r for r in rows}
    testable = [m for m in metrics if parse_metric(m) is not None]
    notes: list[str] = []
    for r in rows:
        key = (r["dataset"], r["protocol_hash"])
        ref = index.get((*key, refs.get(key)))
        if ref is None:
            continue
        r["reference"] = ref["group"]
        r["is_reference"] = ref is r
        if r["is_reference"] or not r["finished_run_ids"]:
            continue
        for m in metrics:
            mine, theirs = r["metrics"][m], ref["metrics"][m]
            if mine["n"]:
                mine["delta"] = mine["mean"] - theirs["mean"]
        tested = [m for m in testable if r["metrics"][m]["n"] and ref["metrics"][m]["n"]]
        if test == "none" or not tested:
            continue
        shared = shared_candidate_sets(r, ref)
        note = pairing_note(r, ref, shared)
        if note:
            notes.append(note)
        if not shared:
            continue
        frames_a, sets_a = _matched(r, shared, per_user)
        frames_b, sets_b = _matched(ref, shared, per_user)
        for m in tested:
            p, n_users, n_sets = paired_pvalue(frames_a, frames_b, m, test, sets_a=sets_a, sets_b=sets_b)
            r["metrics"][m].update(p_raw=p, p=p, n_users=n_users, n_candidate_sets=n_sets)
    correct_pvalues(rows, metrics, correction)
    return notes


def correct_pvalues(rows: list[dict], metrics: list[str], correction: str = "holm") -> None:
    """Adjust the raw p-values per family, in place: one metric against one reference (the rows of one dataset
    and protocol tested against its reference group). Sets `p` (adjusted; NaN stays NaN) and `significant`
    (adjusted p < ALPHA); `p_raw` is kept. An unknown correction is a one-line ConfigError."""
    from llmrec_cli.report.stats import adjust_pvalues, check_correction

    check_correction(correction)
    for m in metrics:
        families: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["reference"] is not None and not r["is_reference"]:
                families.setdefault((r["dataset"], r["protocol_hash"], r["reference"]), []).append(r["metrics"][m])
        for family in families.values():
            for stats, p in zip(family, adjust_pvalues([s["p_raw"] for s in family], correction), strict=True):
                stats.update(p=p, significant=bool(math.isfinite(p) and p < ALPHA))


def protocol_notes(runs) -> list[str]:
    """A note when some runs carry no `protocol_hash` tag (their protocol is derived from params)."""
    untagged = int(column(runs, "tags.protocol_hash").isna().sum())
    if not untagged:
        return []
    return [f"{untagged} run(s) without a protocol_hash tag: protocol derived from their dataset_hash tag and "
            "dataset./eval. params (shown apart from tagged runs)"]


def build_comparison(uri: str, sel: Selection, metrics: list[str] | None = None, baseline: str | None = None,
                     test: str = "ttest", correction: str = "holm") -> Comparison:
    """Load the runs from MLflow, select, aggregate per protocol, pick the references, run the paired tests on
    matched candidate sets and correct them for multiple comparisons."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from llmrec_cli import tracking
    from llmrec_cli.report.stats import TESTS, check_correction

    if test not in TESTS:
        raise ConfigError(f"unknown --test {test!r}; use one of {', '.join(TESTS)}")
    check_correction(correction)
    metrics = list(metrics or DEFAULT_METRICS)
    everything = tracking.search_runs(uri, sel.experiments or None)
    if len(everything) == 0:
        raise LlmrecError(f"no runs in {uri}: run `llmrec train ...` or `llmrec sweep ...` first")
    runs, notes = filter_runs(everything, sel)
    if len(runs) == 0:
        raise LlmrecError(f"no runs match the selection ({sel.describe()}) in {uri}")
    runs = add_groups(runs)
    duplicates: dict = {}
    if not sel.keep_duplicates:
        runs, duplicates = collapse_duplicates(runs)
        if duplicates:
            notes.append(f"set aside {sum(duplicates.values())} duplicate run(s): reruns and resumes of one "
                         f"configuration and seed count once, as the newest FINISHED run (--keep-duplicates "
                         f"counts them all)")
    unknown = [m for m in metrics if f"metrics.{m}" not in runs.columns]
    if len(unknown) == len(metrics) and runs["status"].eq("FINISHED").any():
        raise LlmrecError(f"no run logged {', '.join(unknown)}; metric names look like test/full/ndcg_10")
    notes += [f"metric {m} was not logged by any selected run" for m in unknown]
    notes += protocol_notes(runs)
    rows = aggregate(runs, metrics)
    for row in rows:
        row["duplicates"] = duplicates.get((row["group"], row["dataset"], row["protocol_hash"]), 0)
    refs = choose_references(rows, runs, baseline, metrics[0])
    cache: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="llmrec-compare-") as tmp:
        def per_user(run_id: str):
            if run_id not in cache:
                path = tracking.download_artifact(uri, run_id, PER_USER_ARTIFACT, Path(tmp) / run_id)
                cache[run_id] = pd.read_parquet(path) if path is not None and path.is_file() else None
            return cache[run_id]

        notes += add_significance(rows, refs, metrics, test, per_user, correction)
    return Comparison(rows=rows, metrics=metrics, runs=runs, test=test, uri=uri, notes=notes, correction=correction)
