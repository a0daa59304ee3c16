"""Which runs enter a comparison, and how they group into rows.

Works on the DataFrame of `mlflow.search_runs` (columns `run_id`, `status`, `tags.*`, `params.*`, `metrics.*`),
so every function here is pure and testable on a hand-made frame.

A group is (quadrant, method, model, crm, variant, dataset); its label is the CRM name for baselines ("pop",
"bpr", "sasrec") and "q3/zero_shot/smollm2" (plus the CRM where one is used at inference) for the quadrants.
The variant separates settings that make a different method out of the same one (read from the run's params):
`method.scoring`, `method.mode`, `method.head`, `method.num_samples` (few-shot sizes) and
`candidates.source=crm_topk`, e.g. "q3/zero_shot/smollm2 [scoring=likelihood]".
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llmrec_cli.errors import ConfigError

GROUP_KEYS = ("quadrant", "method", "model", "crm", "dataset")
#: Method settings that split a method into variants (separate rows); logged as params `method.<key>`.
VARIANT_PARAMS = ("scoring", "mode", "head", "num_samples")
STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING")
QUADRANT_ORDER = {"baseline": 0, "1": 1, "2": 2, "3": 3, "4": 4}
BASELINE_ORDER = {"pop": 0, "bpr": 1, "sasrec": 2}


@dataclass
class Selection:
    """The run filters of `llmrec compare` / `llmrec plot`."""

    experiments: list[str] = field(default_factory=list)  # empty: every experiment
    parent: str | None = None  # children of this sweep parent run
    dataset: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)  # empty: every status
    include_reevals: bool = False  # runs tagged `source_run` (llmrec eval) are left out by default

    def describe(self) -> str:
        parts = [f"experiment={','.join(self.experiments)}" if self.experiments else "",
                 f"parent={self.parent}" if self.parent else "",
                 f"dataset={','.join(self.dataset)}" if self.dataset else "",
                 *(f"tag {k}={v}" for k, v in self.tags.items()),
                 f"status={','.join(self.statuses)}" if self.statuses else ""]
        return ", ".join(p for p in parts if p) or "no filter"


def parse_tag_filters(items: list[str] | None) -> dict[str, str]:
    """`["crm=pop", "seed=0"]` -> {"crm": "pop", "seed": "0"}; a malformed item is a one-line error."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--tag wants KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def split_list(values: list[str] | None) -> list[str]:
    """Repeatable options that also accept commas: ["a,b", "c"] -> ["a", "b", "c"]."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def column(df, name: str, default=None):
    """`df[name]` as a Series, or a Series of `default` when the store never logged that column."""
    import pandas as pd

    if name in df.columns:
        return df[name]
    return pd.Series([default] * len(df), index=df.index, dtype=object)


def filter_runs(df, sel: Selection):
    """Apply a selection; drops sweep parents and runs without llmrec tags. Returns (runs, notes)."""
    notes: list[str] = []
    if len(df) == 0:
        return df, notes
    parents = set(column(df, "tags.mlflow.parentRunId").dropna())
    container = (column(df, "tags.sweep") == "true") | df["run_id"].isin(parents)
    foreign = column(df, "tags.quadrant").isna() & ~container
    if foreign.any():
        notes.append(f"skipped {int(foreign.sum())} run(s) without llmrec tags")
    keep = ~container & ~foreign
    if not sel.include_reevals:
        reeval = column(df, "tags.source_run").notna() & keep
        if reeval.any():
            notes.append(f"skipped {int(reeval.sum())} re-evaluation run(s) (--include-reevals shows them)")
        keep &= ~reeval
    if sel.parent:
        keep &= column(df, "tags.mlflow.parentRunId") == sel.parent
    if sel.dataset:
        keep &= column(df, "tags.dataset").isin(sel.dataset)
    for key, value in sel.tags.items():
        keep &= column(df, f"tags.{key}").astype(str) == value
    if sel.statuses:
        wanted = {s.upper() for s in sel.statuses}
        unknown = wanted - set(STATUSES)
        if unknown:
            raise ConfigError(f"unknown --status {sorted(unknown)[0]!r}; use one of {', '.join(STATUSES)}")
        keep &= df["status"].isin(wanted)
    return df[keep].copy(), notes


def group_label(quadrant: str, method: str, model: str, crm: str, variant: str = "") -> str:
    """A short readable name: "sasrec" for a baseline, "q3/zero_shot/smollm2", "q2/kar/smollm2/sasrec",
    with the variant in brackets when there is one: "q3/zero_shot/smollm2 [scoring=likelihood]"."""
    if quadrant == "baseline":
        label = crm if method in ("baseline", "", None) else f"{method}/{crm}"
    else:
        parts = [f"q{quadrant}", method]
        parts += [p for p in (model, crm) if p and p != "none"]
        label = "/".join(str(p) for p in parts)
    return f"{label} [{variant}]" if variant else label


def run_variant(row) -> str:
    """"scoring=likelihood,num_samples=256,candidates=crm_topk" from a run's params ('' for none)."""
    parts = []
    for key in VARIANT_PARAMS:
        value = row.get(f"params.method.{key}")
        if isinstance(value, str) and value not in ("", "None", "null"):
            parts.append(f"{key}={value}")
    source = row.get("params.candidates.source")
    if isinstance(source, str) and source not in ("", "None", "sampled"):
        parts.append(f"candidates={source}")
    return ",".join(parts)


def add_groups(df):
    """Add the group columns (quadrant, method, model, crm, dataset, variant) and `group` (the label)."""
    df = df.copy()
    for key in GROUP_KEYS:
        default = "none" if key in ("model", "crm") else "?"
        df[key] = column(df, f"tags.{key}").fillna(default).astype(str)
    df["variant"] = [run_variant(row) for _, row in df.iterrows()] if len(df) else []
    df["group"] = [group_label(q, m, mo, c, v) for q, m, mo, c, v in
                   zip(df["quadrant"], df["method"], df["model"], df["crm"], df["variant"], strict=True)]
    return df


def group_sort_key(quadrant: str, crm: str, label: str, dataset: str) -> tuple:
    """Rows: per dataset, baselines first (pop, bpr, sasrec), then quadrants 1-4, then by label."""
    return (dataset, QUADRANT_ORDER.get(quadrant, 9), BASELINE_ORDER.get(crm, 9), label)
