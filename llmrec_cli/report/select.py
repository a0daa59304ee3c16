"""Which runs enter a comparison, and how they group into rows.

Works on the DataFrame of `mlflow.search_runs` (columns `run_id`, `status`, `tags.*`, `params.*`, `metrics.*`),
so every function here is pure and testable on a hand-made frame.

A group is (quadrant, method, model, crm, variant, dataset, protocol); its label is the CRM name for baselines
("pop", "bpr", "sasrec") and "q3/zero_shot/smollm2" (plus the CRM where one is used at inference) for the
quadrants. The variant separates settings that make a different method out of the same one (read from the run's
params): `method.scoring`, `method.mode`, `method.head`, `method.num_samples` (few-shot sizes) and
`candidates.source=crm_topk`, e.g. "q3/zero_shot/smollm2 [scoring=likelihood]".

The protocol keeps incomparable runs apart: only runs with equal `protocol_hash` (a tag: the prepared data and
every evaluation setting except the seed) are seeds of one row; runs on two protocols are two rows, never one
mean. Its label (tag `protocol`, e.g. "ml-100k/5core/loo · 20c/943u": dataset/kcore/split · candidates per
user/evaluated users) is shown per row, with " #3fa2" (the hash's start) appended where two protocols would
read the same. Runs logged before these tags get both from what they have (see `run_protocol`). The candidate
set (tag `candidate_set_hash`) differs between seeds by design and is not part of the group: it decides which
runs the paired tests may pair (see compare.py).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field

from llmrec_cli.errors import ConfigError

GROUP_KEYS = ("quadrant", "method", "model", "crm", "dataset")
#: Method settings that split a method into variants (separate rows); logged as params `method.<key>`.
VARIANT_PARAMS = ("scoring", "mode", "head", "num_samples", "aux_tasks")
STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING")
QUADRANT_ORDER = {"baseline": 0, "1": 1, "2": 2, "3": 3, "4": 4}
BASELINE_ORDER = {"pop": 0, "bpr": 1, "lightgcn": 2, "gru4rec": 3, "bert4rec": 4, "sasrec": 5}
#: What decides a protocol for runs without the `protocol_hash` tag (besides tag `dataset_hash`): MLflow params.
PROTOCOL_PARAMS = ("dataset.name", "dataset.kcore", "dataset.min_rating", "dataset.split", "dataset.split_time",
                   "eval.num_negatives", "eval.negative_sampling", "eval.pointwise_negatives", "eval.like_threshold",
                   "eval.max_users")
#: Metrics that count the evaluated users of runs without the `n_eval_users` tag, first found wins.
USER_COUNT_METRICS = ("test/sampled/n_users", "test/full/n_users")


@dataclass
class Selection:
    """The run filters of `llmrec compare` / `llmrec plot`."""

    experiments: list[str] = field(default_factory=list)  # empty: every experiment
    parent: str | None = None  # children of this sweep parent run
    dataset: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)  # empty: every status
    include_reevals: bool = False  # runs tagged `source_run` (llmrec eval) are left out by default
    keep_duplicates: bool = False  # count reruns/resumes of one configuration and seed as separate runs

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
        if isinstance(value, str) and value not in ("", "None", "null", "[]"):
            parts.append(f"{key}={value.replace(' ', '')}")
    loss = row.get("params.crm.loss")  # a CRM's objective (SASRec ce | bce): a variant, ce the default
    if isinstance(loss, str) and loss not in ("", "None", "ce"):
        parts.append(f"loss={loss}")
    source = row.get("params.candidates.source")
    if isinstance(source, str) and source not in ("", "None", "sampled"):
        parts.append(f"candidates={source}")
    perms = row.get("params.eval.permutations")  # listwise prompt orders averaged: an inference setting
    if isinstance(perms, str) and perms not in ("", "None", "1"):
        parts.append(f"permutations={perms}")
    if text(row.get("tags.source_run")):  # `llmrec eval` of another run: its own row, never extra seeds
        parts.append("re-eval")
    return ",".join(parts)


def text(value) -> str | None:
    """A tag, param or metric cell as a stripped string; None when missing (None, NaN, "")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    out = str(value).strip()
    return out or None


def count(value) -> int | None:
    """A count from a cell ("943", "943.0", 943.0) as an int; None when missing or not a number ("None")."""
    try:
        x = float(text(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(x) if math.isfinite(x) else None


def run_n_candidates(row) -> int | None:
    """Sampled-protocol candidates per user: tag `n_candidates`, else param `eval.num_negatives` + 1."""
    tagged = count(row.get("tags.n_candidates"))
    if tagged is not None:
        return tagged
    negatives = count(row.get("params.eval.num_negatives"))
    return None if negatives is None else negatives + 1


def run_n_eval_users(row) -> int | None:
    """Users evaluated on the test split: tag `n_eval_users`, else metric test/sampled/n_users or test/full/n_users."""
    for key in ("tags.n_eval_users", *(f"metrics.{m}" for m in USER_COUNT_METRICS)):
        n = count(row.get(key))
        if n is not None:
            return n
    return None


def fallback_protocol_hash(row) -> str:
    """For runs without tag `protocol_hash`: a hash of tag `dataset_hash` and the PROTOCOL_PARAMS (split absent
    means loo). Equal settings give equal hashes; it never equals a tagged run's hash, so old and new runs stay
    apart unless their labels say they match (they still show as two rows, see `protocol_labels`)."""
    settings = {"dataset_hash": text(row.get("tags.dataset_hash")),
                **{key: text(row.get(f"params.{key}")) for key in PROTOCOL_PARAMS}}
    settings["dataset.split"] = settings["dataset.split"] or "loo"
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return "legacy-" + digest[:12]


def fallback_protocol_label(row) -> str:
    """"ml-100k/5core/loo · 20c/943u" from params (dataset.name, dataset.kcore, dataset.split), the candidate and
    user counts; "?" where a count is unknown, no kcore part when there is no k-core."""
    name = text(row.get("params.dataset.name")) or text(row.get("tags.dataset")) or "?"
    kcore = count(row.get("params.dataset.kcore"))
    split = text(row.get("params.dataset.split")) or "loo"
    parts = [name, *([f"{kcore}core"] if kcore else []), split]
    cands, users = run_n_candidates(row), run_n_eval_users(row)
    return "/".join(parts) + f" · {'?' if cands is None else cands}c/{'?' if users is None else users}u"


def run_protocol(row) -> tuple[str, str]:
    """(protocol hash, label) of a run: tags `protocol_hash` and `protocol`, else the fallbacks above."""
    phash = text(row.get("tags.protocol_hash")) or fallback_protocol_hash(row)
    return phash, text(row.get("tags.protocol")) or fallback_protocol_label(row)


def protocol_labels(hashes: list[str], labels: list[str]) -> list[str]:
    """The labels, with " #<start of the hash>" appended wherever one label stands for several hashes; the
    suffix grows from 4 characters until those hashes read apart, so two protocols never show alike."""
    by_label: dict[str, set[str]] = {}
    for h, lab in zip(hashes, labels, strict=True):
        by_label.setdefault(lab, set()).add(h)
    suffix: dict[tuple[str, str], str] = {}
    for lab, group in by_label.items():
        if len(group) < 2:
            continue
        stems = [h.removeprefix("legacy-") for h in group]
        width = 4
        while len({s[:width] for s in stems}) < len(stems) and width < max(map(len, stems)):
            width += 1
        suffix.update({(lab, h): f"{lab} #{s[:width]}" for h, s in zip(group, stems, strict=True)})
    return [suffix.get((lab, h), lab) for h, lab in zip(hashes, labels, strict=True)]


def add_groups(df):
    """Add the group columns (quadrant, method, model, crm, dataset, variant), `group` (the label) and the
    protocol columns: `protocol_hash`, `protocol` (its label, unique per hash), `n_eval_users`, `n_candidates`,
    plus `candidate_set_hash` (None when not logged) and `seed` ("?" when not logged)."""
    df = df.copy()
    for key in GROUP_KEYS:
        default = "none" if key in ("model", "crm") else "?"
        df[key] = column(df, f"tags.{key}").fillna(default).astype(str)
    rows = [row for _, row in df.iterrows()]
    df["variant"] = [run_variant(row) for row in rows]
    df["group"] = [group_label(q, m, mo, c, v) for q, m, mo, c, v in
                   zip(df["quadrant"], df["method"], df["model"], df["crm"], df["variant"], strict=True)]
    protocols = [run_protocol(row) for row in rows]
    df["protocol_hash"] = [h for h, _ in protocols]
    df["protocol"] = protocol_labels([h for h, _ in protocols], [lab for _, lab in protocols])
    df["n_eval_users"] = pd_counts([run_n_eval_users(row) for row in rows], df.index)
    df["n_candidates"] = pd_counts([run_n_candidates(row) for row in rows], df.index)
    df["candidate_set_hash"] = [text(row.get("tags.candidate_set_hash")) for row in rows]
    df["seed"] = [text(row.get("tags.seed")) or "?" for row in rows]
    return df


def collapse_duplicates(df):
    """One run per (group, dataset, protocol, seed): reruns and resumes of one configuration and seed count once,
    as the newest FINISHED run (the newest run when none finished). Runs without a seed tag are all kept.
    Returns (kept runs, {(group, dataset, protocol_hash): runs set aside})."""
    import pandas as pd

    if len(df) == 0:
        return df, {}
    order = df.assign(_done=df["status"].eq("FINISHED"),
                      _start=pd.to_datetime(column(df, "start_time"), errors="coerce", utc=True))
    order = order.sort_values(["_done", "_start"], ascending=False, kind="stable")
    keys = ["group", "dataset", "protocol_hash", "seed"]
    dup = order.duplicated(keys, keep="first") & order["seed"].ne("?")
    aside: dict[tuple, int] = {}
    for (label, dataset, phash), n in order[dup].groupby(["group", "dataset", "protocol_hash"]).size().items():
        aside[(label, dataset, phash)] = int(n)
    kept = df.loc[order.index[~dup.to_numpy()]]
    return kept.loc[[i for i in df.index if i in kept.index]], aside


def pd_counts(values: list[int | None], index):
    """Counts as an object Series (ints and None, never floats with NaN)."""
    import pandas as pd

    return pd.Series(values, index=index, dtype=object)


def common_count(values) -> int | None:
    """The most common known count among `values` (None when none is known)."""
    known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return int(Counter(known).most_common(1)[0][0]) if known else None


def seed_list(seeds) -> str:
    """"0,1,2": distinct seeds, numeric ones in numeric order."""
    distinct = set(map(str, seeds))
    return ",".join(sorted(distinct, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit()
                                                    else 0, s)))


def group_sort_key(quadrant: str, crm: str, label: str, dataset: str, protocol: str = "") -> tuple:
    """Rows: per dataset and protocol, baselines first (pop, bpr, sasrec), then quadrants 1-4, then by label."""
    return (dataset, protocol, QUADRANT_ORDER.get(quadrant, 9), BASELINE_ORDER.get(crm, 9), label)
