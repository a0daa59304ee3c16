"""docs/reproduction.md: published numbers beside llmrec's, each under the protocol of the paper it comes from.

`llmrec report reproduction` reads `published.yaml` (one entry per paper, dataset and model, with its source)
and the FINISHED runs of an MLflow store. An entry's runs are those whose tags match its `match` (the protocol
preset, dataset, CRM and loss, ...), re-evaluations excluded, one run per seed (the newest). Runs are averaged
only within one protocol (`protocol_hash`: split, candidates, users) and one CRM configuration (`crm_config_hash`);
when several exist, the one with the most seeds is reported and the others are named as set aside. A cell is
mean +- the 95% Student-t half-width over seeds; the difference is llmrec's mean minus the published value.

A second table lists every CRM baseline under the unified protocol for the datasets asked for (by default
ml-100k), which no paper publishes but which the presets' rows are read against.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from llmrec_cli.errors import LlmrecError
from llmrec_cli.report.stats import summarize

PUBLISHED = Path(__file__).with_name("published.yaml")
MATCH_TAGS = ("protocol_preset", "dataset", "crm", "crm_loss", "quadrant", "method")


@dataclass
class Entry:
    """One published (paper, dataset, model) and the runs that reproduce it."""

    paper: str
    source: str
    model: str
    match: dict
    metrics: dict  # "<protocol>/<metric>" -> published value or None
    note: str = ""
    runs: pd.DataFrame | None = None
    set_aside: list[str] = field(default_factory=list)


def load_published(path: Path = PUBLISHED) -> list[Entry]:
    from omegaconf import OmegaConf

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except (OSError, ValueError) as exc:
        raise LlmrecError(f"{path}: cannot read the published numbers ({exc})") from None
    entries = []
    for i, item in enumerate(raw or []):
        lacking = [k for k in ("paper", "source", "model", "match", "metrics") if k not in item]
        if lacking:
            raise LlmrecError(f"{path}: entry {i + 1} lacks {', '.join(lacking)}")
        unknown = set(item["match"]) - set(MATCH_TAGS)
        if unknown:
            raise LlmrecError(f"{path}: entry {i + 1} matches on unknown tags {sorted(unknown)} (use {MATCH_TAGS})")
        entries.append(Entry(paper=item["paper"], source=item["source"], model=item["model"],
                             match={k: str(v) for k, v in item["match"].items()}, metrics=item["metrics"] or {},
                             note=item.get("note", "")))
    return entries


def _tag(df: pd.DataFrame, key: str) -> pd.Series:
    col = f"tags.{key}"
    return df[col].fillna("").astype(str) if col in df else pd.Series("", index=df.index)


def finished_runs(df: pd.DataFrame) -> pd.DataFrame:
    """FINISHED training runs (no re-evaluations), newest first."""
    if len(df) == 0:
        return df
    keep = df["status"].eq("FINISHED") & _tag(df, "source_run").eq("") & _tag(df, "seed").ne("")
    out = df[keep]
    return out.sort_values("start_time", ascending=False, kind="stable") if "start_time" in out else out


def select_runs(df: pd.DataFrame, match: dict) -> tuple[pd.DataFrame, list[str]]:
    """The runs of one entry: matching tags, one protocol and CRM configuration, one run per seed."""
    sel = df
    for key, value in match.items():
        tag = _tag(sel, key)
        sel = sel[tag.eq(value) | (tag.eq("") & (value == "ce") & (key == "crm_loss"))]
    if len(sel) == 0:
        return sel, []
    keyed = sel.assign(_protocol=_tag(sel, "protocol_hash"), _crm=_tag(sel, "crm_config_hash"))
    groups = {k: g for k, g in keyed.groupby(["_protocol", "_crm"], sort=False)}  # newest group first
    best = max(groups, key=lambda k: (groups[k]["tags.seed"].nunique(), -list(groups).index(k)))
    aside = [f"{len(g)} run(s) of protocol {k[0]} / CRM config {k[1]}" for k, g in groups.items() if k != best]
    chosen = groups[best].drop_duplicates("tags.seed", keep="first")  # newest run per seed
    return chosen, aside


def gather(df: pd.DataFrame, entries: list[Entry]) -> list[Entry]:
    runs = finished_runs(df)
    for entry in entries:
        entry.runs, entry.set_aside = select_runs(runs, entry.match)
    return entries


def _fmt(value, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(values: list[float]) -> tuple[str, float]:
    s = summarize(values)
    if s["n"] == 0:
        return "not run", math.nan
    ci = "" if math.isnan(s["ci95"]) else f" ± {s['ci95']:.4f}"
    return f"{s['mean']:.4f}{ci} ({s['n']})", s["mean"]


def _seeds(runs: pd.DataFrame) -> str:
    return ",".join(sorted(runs["tags.seed"].astype(str), key=lambda v: (len(v), v))) if len(runs) else "—"


def _epochs(runs: pd.DataFrame) -> str:
    col = "metrics.fit/best_epoch"
    if len(runs) == 0 or col not in runs or runs[col].isna().all():
        return "—"
    caps = runs.get("params.trainer.max_epochs")
    cap = f" / cap {caps.iloc[0]}" if caps is not None and caps.notna().all() and caps.nunique() == 1 else ""
    return f"{runs[col].mean():.0f}{cap}"


def render(entries: list[Entry], unified: pd.DataFrame | None, uri: str, datasets: list[str]) -> str:
    lines = [
        "# Reproduction: published numbers beside llmrec's",
        "",
        f"Generated by `llmrec report reproduction` on {dt.date.today().isoformat()} from `{uri}` "
        "(published numbers: `llmrec_cli/report/published.yaml`). Each llmrec cell is the mean ± 95% t-interval "
        "half-width over seeds (number of seeds in brackets), on the test split, selected on the valid split "
        "only; \"diff\" is llmrec minus published. A row's runs share one protocol (`protocol_hash`) and one CRM "
        "configuration (`crm_config_hash`). \"best epoch\" is the mean epoch early stopping kept, with the cap the "
        "runs had (2-core CPU budgets: see `scripts/reproduce.sh`). Split: leave-one-out by time (order, for "
        "user_sequence files) on every dataset here; candidates: the whole catalogue minus the user's history "
        "(full), or the target among 20 shared ones (sampled).",
        "",
        "| paper | dataset · protocol | model | metric | published | llmrec | diff | seeds | best epoch | source |",
        "|---|---|---|---|---:|---:|---:|---|---|---|",
    ]
    notes = []
    for entry in entries:
        runs = entry.runs if entry.runs is not None else pd.DataFrame()
        where = f"{entry.match.get('dataset', '?')} · {entry.match.get('protocol_preset', 'unified')}"
        if len(runs) and "tags.n_eval_users" in runs:
            where += f" · {runs['tags.n_eval_users'].iloc[0]} test users"
        for i, (metric, published) in enumerate(entry.metrics.items()):
            col = f"metrics.test/{metric}"
            values = runs[col].dropna().tolist() if col in runs else []
            cell, mean = _cell(values)
            diff = mean - published if published is not None and not math.isnan(mean) else math.nan
            rel = f" ({100 * diff / published:+.0f}%)" if published and not math.isnan(diff) else ""
            diff_text = "—" if math.isnan(diff) else f"{diff:+.4f}"
            first = (entry.paper, where, entry.model) if i == 0 else ("", "", "")
            source, seeds, epochs = (entry.source, _seeds(runs), _epochs(runs)) if i == 0 else ("", "", "")
            lines.append(f"| {first[0]} | {first[1]} | {first[2]} | {metric} | {_fmt(published)} | {cell} | "
                         f"{diff_text}{rel} | {seeds} | {epochs} | {source} |")
        if entry.note:
            notes.append(f"- **{entry.model}** ({entry.paper}): {entry.note}.")
        if entry.set_aside:
            notes.append(f"- **{entry.model}**: set aside {'; '.join(entry.set_aside)} (another protocol or CRM "
                         "configuration: never averaged with the row's runs).")
    lines += ["", "Notes:", "", *notes]
    if unified is not None and len(unified):
        lines += ["", f"## CRM baselines under the unified protocol ({', '.join(datasets)})", "",
                  "No paper publishes these (the unified protocol is llmrec's own); they are what every quadrant "
                  "is compared against in the README's four-quadrant table. full = all unseen items ranked; "
                  "sampled = the target among 20 shared candidates.", "",
                  "| dataset | model | full/ndcg_10 | full/hr_10 | sampled/ndcg_10 | test users | seeds | best epoch |",
                  "|---|---|---:|---:|---:|---:|---|---|"]
        for (dataset, model), runs in unified.groupby(["tags.dataset", "model"], sort=False):
            cells = [_cell(runs[f"metrics.test/{m}"].dropna().tolist() if f"metrics.test/{m}" in runs else [])[0]
                     for m in ("full/ndcg_10", "full/hr_10", "sampled/ndcg_10")]
            users = runs["tags.n_eval_users"].iloc[0] if "tags.n_eval_users" in runs else "?"
            lines.append(f"| {dataset} | {model} | {' | '.join(cells)} | {users} | {_seeds(runs)} | {_epochs(runs)} |")
    return "\n".join(lines) + "\n"


CRM_NAMES = {"pop": "Pop", "bpr": "BPR-MF", "sasrec": "SASRec", "gru4rec": "GRU4Rec", "bert4rec": "BERT4Rec",
             "lightgcn": "LightGCN"}


def unified_baselines(df: pd.DataFrame, datasets: list[str]) -> pd.DataFrame:
    """CRM baselines under the unified protocol on DATASETS, one run per (dataset, CRM, loss, seed)."""
    runs = finished_runs(df)
    if len(runs) == 0:
        return runs
    preset = _tag(runs, "protocol_preset")
    runs = runs[_tag(runs, "quadrant").eq("baseline") & (preset.eq("unified") | preset.eq(""))
                & _tag(runs, "dataset").isin(datasets)].copy()
    loss = _tag(runs, "crm_loss")
    runs["model"] = [CRM_NAMES.get(c, c) + (f" ({x})" if x else "") for c, x in zip(_tag(runs, "crm"), loss, strict=True)]
    groups = []
    for _, g in runs.groupby(["tags.dataset", "model"], sort=True):
        chosen, _ = select_runs(g, {})
        groups.append(chosen)
    order = {name: i for i, name in enumerate(CRM_NAMES.values())}
    out = pd.concat(groups) if groups else runs
    out = out.assign(_order=[order.get(m.split(" (")[0], 99) for m in out["model"]])
    return out.sort_values(["tags.dataset", "_order", "model"], kind="stable")


def write_reproduction(uri: str, out: Path, experiments: list[str] | None = None,
                       datasets: tuple[str, ...] = ("ml-100k",), published: Path = PUBLISHED) -> str:
    from llmrec_cli import tracking
    from llmrec_cli.utils.io import atomic_write

    df = tracking.search_runs(uri, experiments)
    entries = gather(df, load_published(published))
    text = render(entries, unified_baselines(df, list(datasets)), uri, list(datasets))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    return text
