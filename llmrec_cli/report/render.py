"""Render a comparison: rich table (terminal), markdown, csv (one flat row per group) or json (list of rows).

Every format shows per row its protocol label (`protocol`), the users it was evaluated on (`users`) and the
sampled candidates per user (`cands`); rows on different protocols are never averaged together. Cells read
"mean ± CI half-width" with the paired-test p-value against the reference of the row's dataset and protocol,
adjusted for multiple comparisons (csv and json also hold the raw one, `p_raw`); "*" marks adjusted p < 0.05 and
"ref" the reference row itself. The caption names the test and the correction. NaN prints as "—" (null in json).
"""
from __future__ import annotations

import json
import math

from llmrec_cli.report.compare import ALPHA, Comparison
from llmrec_cli.report.stats import CORRECTION_NAMES

FORMATS = ("table", "markdown", "csv", "json")
TEST_NAMES = {"ttest": "paired t-test", "permutation": "paired permutation test", "none": "no test"}


def fmt_num(x, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_p(stats: dict, is_reference: bool) -> str:
    if is_reference:
        return "ref"
    p = stats.get("p", math.nan)
    if p is None or math.isnan(p):
        return "—"
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    return text + ("*" if p < ALPHA else "")


def fmt_mean(stats: dict) -> str:
    if not stats.get("n"):
        return "—"
    return f"{fmt_num(stats['mean'])} ± {fmt_num(stats['ci95'])}"


def fmt_count(n) -> str:
    return "—" if n is None else str(n)


def fmt_runs(counts: dict, duplicates: int = 0) -> str:
    """"3" when all finished, else "2 ok, 1 failed" (non-zero statuses only); "+N dup" for the duplicates set
    aside (reruns and resumes of a configuration and seed already counted)."""
    shown = {k: v for k, v in counts.items() if v}
    if set(shown) <= {"finished"}:
        text = str(counts.get("finished", 0))
    else:
        text = ", ".join(f"{v} {'ok' if k == 'finished' else k}" for k, v in shown.items())
    return text + (f" (+{duplicates} dup)" if duplicates else "")


def caption(comp: Comparison) -> str:
    """What the cells mean: seeds averaged within one protocol, the test, its reference(s) and the correction."""
    refs = sorted({f"{r['reference']}" + (f" ({r['protocol']})" if _many_protocols(comp) else "")
                   for r in comp.rows if r["is_reference"]})
    correction = CORRECTION_NAMES.get(comp.correction, comp.correction)
    adjusted = (f"{correction}-adjusted per metric and reference (raw p in csv/json)" if comp.correction != "none"
                else "not adjusted for multiple comparisons")
    parts = ["one row per group and protocol (dataset/kcore/split · candidates/users): seeds are averaged only "
             "within a protocol",
             "mean ± 95% CI half-width over seeds (Student t; — for one run)",
             f"p: {TEST_NAMES[comp.test]} on per-user metrics of runs on the same candidate sets (seed-averaged) vs "
             + (", ".join(refs) if refs else "no reference") + f", {adjusted}",
             f"* {'adjusted ' if comp.correction != 'none' else ''}p < {ALPHA:g}",
             "only FINISHED runs enter the statistics, one per configuration and seed (+N dup: reruns set aside)"]
    return "; ".join(parts)


def _many_protocols(comp: Comparison) -> bool:
    return len({r["protocol_hash"] for r in comp.rows}) > 1


def _has_errors(comp: Comparison) -> bool:
    return any(r["error"] for r in comp.rows)


def to_records(comp: Comparison) -> list[dict]:
    """JSON-ready rows: NaN -> None, numpy scalars -> Python numbers."""
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if hasattr(x, "item") and not isinstance(x, (str, bytes)):
            x = x.item()
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    return [clean(r) for r in comp.rows]


def to_json(comp: Comparison) -> str:
    return json.dumps(to_records(comp), indent=2, allow_nan=False)


def flat_rows(comp: Comparison) -> list[dict]:
    """One flat dict per row: identity and protocol (protocol, protocol_hash, users, cands), run counts, then
    `{metric}.{mean,std,ci95,n,p_raw,p,significant,n_users,n_candidate_sets}`."""
    out = []
    for r in to_records(comp):
        flat = {k: r[k] for k in ("group", "dataset", "protocol", "protocol_hash", "users", "cands", "quadrant",
                                  "method", "model", "crm")}
        flat.update({f"n_{k}": v for k, v in r["runs"].items()}, n_duplicates=r.get("duplicates", 0))
        flat.update(error=r["error"], reference=r["reference"], is_reference=r["is_reference"],
                    num_parameters=r["num_parameters"], cost_per_1k_users=r["cost_per_1k_users"])
        for m, s in r["metrics"].items():
            for key in ("mean", "std", "ci95", "n", "p_raw", "p", "significant", "n_users", "n_candidate_sets"):
                flat[f"{m}.{key}"] = s[key]
        out.append(flat)
    return out


def to_csv(comp: Comparison) -> str:
    import csv
    import io

    rows = flat_rows(comp)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["group"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _cells(comp: Comparison, r: dict, sep: str) -> list[str]:
    cells = [r["group"], r["dataset"], r["protocol"], fmt_count(r["users"]), fmt_count(r["cands"]),
             fmt_runs(r["runs"], r.get("duplicates", 0))]
    for m in comp.metrics:
        s = r["metrics"][m]
        p = fmt_p(s, r["is_reference"]) if s.get("n") else "—"
        cells.append(fmt_mean(s) + ("" if p == "—" else f"{sep}{p}" if p == "ref" else f"{sep}p={p}"))
    if _has_errors(comp):
        cells.append(r["error"])
    return cells


def _headers(comp: Comparison) -> list[str]:
    return ["group", "dataset", "protocol", "users", "cands", "runs", *comp.metrics,
            *(["error"] if _has_errors(comp) else [])]


def _right_aligned(comp: Comparison, header: str) -> bool:
    return header in comp.metrics or header in ("users", "cands", "runs")


def to_markdown(comp: Comparison) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("*", "\\*")

    heads = _headers(comp)
    align = ["---:" if _right_aligned(comp, h) else "---" for h in heads]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in _cells(comp, r, " ")) + " |" for r in comp.rows]
    return "\n".join(lines) + f"\n\n{esc(caption(comp))}\n"


def rich_table(comp: Comparison):
    from rich.table import Table

    table = Table(title=f"llmrec compare  ({len(comp.runs)} runs, {len(comp.rows)} groups)",
                  caption=caption(comp), caption_justify="left")
    for h in _headers(comp):
        table.add_column(h, justify="right" if _right_aligned(comp, h) else "left", overflow="fold")
    for r in comp.rows:
        style = "bold" if r["is_reference"] else ("dim" if r["runs"]["finished"] == 0 else None)
        table.add_row(*_cells(comp, r, "\n"), style=style)
    return table


def render(comp: Comparison, fmt: str) -> str | object:
    """The text for markdown/csv/json, or a rich Table for "table"."""
    if fmt == "json":
        return to_json(comp)
    if fmt == "markdown":
        return to_markdown(comp)
    if fmt == "csv":
        return to_csv(comp)
    return rich_table(comp)
