"""PNG plots of a comparison (matplotlib, Agg backend): the quadrant map and the quality-vs-cost Pareto plot.

- `quadrant_map.png`: the survey's 2x2 grid (x: CRM at inference "not used" | "used"; y: LLM "frozen" |
  "tuned"; quadrant 1 = tuned + used, 2 = frozen + used, 3 = frozen + not used, 4 = tuned + not used), one
  point per method/model group inside its cell, sized by LLM parameter count, coloured by the strongest
  baseline it beats on the first metric (pop < bpr < sasrec); the baselines sit in a side strip.
- `pareto.png`: first metric vs cost (fit + eval seconds, or `cost/gpu_seconds`, per 1,000 users), log-x,
  with each dataset's Pareto frontier (cheaper and better) drawn and every point labelled.

Protocols are never mixed: per dataset both plots show one protocol only, the one with the most finished runs
(ties: the one listed first), and name it in the title; `left_out_protocols` lists the others (the CLI prints a
note). To plot another one, select it (e.g. `--tag protocol_hash=...`). A group beats a baseline only if both
were measured on the same protocol. The map's title names the metric its values and colours show.
"""
from __future__ import annotations

import math
from pathlib import Path

from llmrec_cli.report.compare import Comparison, higher_is_better

BASELINES = ("pop", "bpr", "sasrec")  # weakest to strongest
BEAT_COLOURS = {"none": "#b0b0b0", "pop": "#f2c14e", "bpr": "#f78154", "sasrec": "#2a7f62"}
QUADRANT_COLOURS = {"baseline": "#6c757d", "1": "#d62728", "2": "#1f77b4", "3": "#2ca02c", "4": "#9467bd"}
# cell origin (x, y) of each quadrant: x 0 = CRM not used, 1 = used; y 0 = LLM frozen, 1 = tuned
CELLS = {"1": (1, 1), "2": (1, 0), "3": (0, 0), "4": (0, 1)}
CELL_TEXT = {"1": "tuned LLM, CRM used", "2": "frozen LLM, CRM used",
             "3": "frozen LLM, no CRM", "4": "tuned LLM, no CRM"}
DEFAULT_SIZE = 60.0


def write_plots(comp: Comparison, directory: str | Path) -> list[Path]:
    """Write quadrant_map.png and pareto.png into DIRECTORY (created), one protocol per dataset (see the module
    docstring); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [quadrant_map(comp, directory / "quadrant_map.png"), pareto(comp, directory / "pareto.png")]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from llmrec_cli.utils.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def marker_size(num_parameters: float | None) -> float:
    """Scatter area from an LLM parameter count (sqrt scale, 100M -> 60, 7B -> ~500); default when unknown."""
    if num_parameters is None or not math.isfinite(num_parameters) or num_parameters <= 0:
        return DEFAULT_SIZE
    return float(min(1200.0, max(25.0, 60.0 * math.sqrt(num_parameters / 1e8))))


def plot_protocols(rows: list[dict]) -> dict[str, str]:
    """{dataset: protocol_hash} plotted per dataset: the protocol with the most finished runs, then the most runs,
    then the first in row order."""
    tally: dict[str, dict[str, tuple[int, int, int]]] = {}
    for i, r in enumerate(rows):
        per = tally.setdefault(r["dataset"], {})
        finished, total, first = per.get(r["protocol_hash"], (0, 0, -i))
        per[r["protocol_hash"]] = (finished + r["runs"]["finished"], total + sum(r["runs"].values()), first)
    return {dataset: max(per, key=per.__getitem__) for dataset, per in tally.items()}


def plot_rows(rows: list[dict]) -> list[dict]:
    """The rows on their dataset's plotted protocol (see `plot_protocols`), in order."""
    chosen = plot_protocols(rows)
    return [r for r in rows if chosen[r["dataset"]] == r["protocol_hash"]]


def left_out_protocols(rows: list[dict]) -> list[str]:
    """Labels of the protocols the plots leave out, in row order."""
    chosen = plot_protocols(rows)
    return list(dict.fromkeys(r["protocol"] for r in rows if chosen[r["dataset"]] != r["protocol_hash"]))


def protocol_title(rows: list[dict]) -> str:
    """The plotted protocols' labels for a title ("protocol: ml-100k/5core/loo · 20c/943u")."""
    labels = list(dict.fromkeys(r["protocol"] for r in rows))
    return ("protocol: " if len(labels) == 1 else "protocols: ") + "; ".join(labels) if labels else "no runs"


def strongest_beaten(row: dict, rows: list[dict], metric: str) -> str:
    """The strongest baseline (pop < bpr < sasrec) of the row's dataset and protocol whose mean the row's beats."""
    mine = row["metrics"].get(metric, {})
    if not mine.get("n"):
        return "none"
    sign = 1 if higher_is_better(metric) else -1
    beaten = "none"
    for name in BASELINES:
        for b in rows:
            if (b["quadrant"] == "baseline" and b["group"] == name and b["dataset"] == row["dataset"]
                    and b["protocol_hash"] == row["protocol_hash"]):
                theirs = b["metrics"].get(metric, {})
                if theirs.get("n") and sign * (mine["mean"] - theirs["mean"]) > 0:
                    beaten = name
    return beaten


def cell_positions(n: int, x0: float, y0: float) -> list[tuple[float, float]]:
    """Spread N points on a grid inside the unit cell at (x0, y0), below the cell's title, room for labels."""
    cols = max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / cols))
    slot = 0.78 / nrows
    return [(x0 + (i % cols + 0.5) / cols, y0 + 0.80 - slot * (i // cols) - slot * 0.3) for i in range(n)]


def _many_datasets(rows: list[dict]) -> bool:
    """Whether labels need the dataset: more than one dataset has finished runs."""
    return len({r["dataset"] for r in rows if r["runs"]["finished"]}) > 1


def _cell_label(row: dict) -> str:
    """Inside its quadrant's cell a group needs no "qN/": method, then model (+ CRM) on a second line."""
    rest = [p for p in (row["model"], row["crm"]) if p and p != "none"]
    return row["method"] + ("\n" + "/".join(rest) if rest else "")


def _short(row: dict, many_datasets: bool) -> str:
    return row["group"] + (f" ({row['dataset']})" if many_datasets else "")


def quadrant_map(comp: Comparison, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    metric = comp.metrics[0]
    rows = plot_rows(comp.rows)
    many = _many_datasets(rows)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(13, 9), gridspec_kw={"width_ratios": [4, 1.5]})
    for q in CELLS:
        _draw_cell(ax, q, [r for r in rows if r["quadrant"] == q], rows, metric, many)
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 2)
    ax.axhline(1, color="black", linewidth=1)
    ax.axvline(1, color="black", linewidth=1)
    ax.set_xticks([0.5, 1.5], ["not used", "used"])
    ax.set_yticks([0.5, 1.5], ["frozen", "tuned"], rotation=90, va="center")
    ax.set_xlabel("conventional recommender (CRM) at inference", fontsize=11)
    ax.set_ylabel("LLM during training", fontsize=11)
    ax.set_title(f"Where the LLM enters — values: mean {metric} over seeds\n{protocol_title(rows)}", fontsize=12)
    _baseline_strip(side, rows, metric, many)
    colour_handles = [Line2D([], [], marker="o", linestyle="", markersize=9, markerfacecolor=c,
                             markeredgecolor="black", label=name) for name, c in BEAT_COLOURS.items()]
    size_handles = [plt.scatter([], [], s=marker_size(n), color="white", edgecolor="black", label=lbl)
                    for n, lbl in ((None, "size unknown"), (1e8, "100M"), (1e9, "1B"), (7e9, "7B"))]
    leg = fig.legend(handles=colour_handles, title=f"strongest baseline beaten ({metric})", loc="lower center",
                     ncol=4, bbox_to_anchor=(0.33, -0.07), frameon=False)
    fig.add_artist(leg)
    fig.legend(handles=size_handles, title="LLM parameters", loc="lower center", ncol=4,
               bbox_to_anchor=(0.78, -0.07), frameon=False)
    return _save(fig, path)


def _draw_cell(ax, q: str, members: list[dict], rows: list[dict], metric: str, many: bool) -> None:
    """One quadrant: tinted cell, its title, and a labelled point per group (an x for no finished run)."""
    import matplotlib.pyplot as plt

    x0, y0 = CELLS[q]
    ax.add_patch(plt.Rectangle((x0, y0), 1, 1, facecolor=QUADRANT_COLOURS[q], alpha=0.07, edgecolor="none"))
    ax.text(x0 + 0.03, y0 + 0.96, f"Quadrant {q}", fontsize=12, fontweight="bold", va="top")
    ax.text(x0 + 0.03, y0 + 0.89, CELL_TEXT[q], fontsize=9, color="#555555", va="top")
    if not members:
        ax.text(x0 + 0.5, y0 + 0.4, "no runs", ha="center", va="center", fontsize=10, color="#999999")
    for r, (x, y) in zip(members, cell_positions(len(members), x0, y0), strict=True):
        s = r["metrics"][metric]
        if s["n"]:
            size = marker_size(r["num_parameters"])
            ax.scatter([x], [y], s=size, color=BEAT_COLOURS[strongest_beaten(r, rows, metric)],
                       edgecolor="black", linewidth=0.6, zorder=3)
            value = f"{s['mean']:.4f}"
        else:
            size = DEFAULT_SIZE
            ax.scatter([x], [y], s=size, marker="x", color="#999999", zorder=3)
            value = "no finished run"
        text = f"{_cell_label(r)}\n" + (f"{r['dataset']}: " if many else "") + value
        ax.annotate(text, (x, y), xytext=(0, -math.sqrt(size) / 2 - 3), textcoords="offset points", ha="center",
                    va="top", fontsize=7.5, linespacing=1.1, zorder=4)


def _baseline_strip(ax, rows: list[dict], metric: str, many: bool) -> None:
    """Baselines (no LLM) on a vertical metric axis, with their 95% CIs."""
    base = [r for r in rows if r["quadrant"] == "baseline" and r["metrics"][metric]["n"]]
    ax.set_title("baselines (no LLM)", fontsize=11)
    ax.set_xlim(-1, 1)
    ax.set_xticks([])
    ax.set_ylabel(metric)
    if not base:
        ax.text(0.5, 0.5, "no finished\nbaseline runs", ha="center", va="center", transform=ax.transAxes,
                color="#999999")
        ax.set_yticks([])
        return
    for i, r in enumerate(base):
        s = r["metrics"][metric]
        x = -0.6 + 0.6 * (BASELINES.index(r["group"]) if r["group"] in BASELINES else i % 3)
        colour = BEAT_COLOURS.get(r["group"], QUADRANT_COLOURS["baseline"])
        ax.errorbar([x], [s["mean"]], yerr=yerr(s["mean"], s["ci95"], metric), fmt="o", markersize=9, color=colour,
                    markeredgecolor="black", ecolor="#444444", capsize=3, zorder=3)
        ax.annotate(_short(r, many), (x, s["mean"]), xytext=(0, 8), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8, zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.grid(axis="y", alpha=0.3)


def bounded(metric: str) -> bool:
    """Rank and AUC metrics live in [0, 1]: their CI bars are clipped there (seed CIs with n=2 are huge)."""
    name = metric.rsplit("/", 1)[-1]
    return name in ("auc", "gauc") or name.split("_")[0] in ("hr", "ndcg", "mrr", "recall", "precision")


def yerr(mean: float, ci: float, metric: str) -> list[list[float]]:
    """Asymmetric error bar [[below], [above]] of a mean ± CI half-width (0 when the CI is NaN)."""
    ci = ci if math.isfinite(ci) else 0.0
    if bounded(metric):
        return [[min(ci, max(mean, 0.0))], [min(ci, max(1.0 - mean, 0.0))]]
    return [[ci], [ci]]


def pareto_front(points: list[tuple[float, float]], higher_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates (cost no higher and quality no worse, one strictly)."""
    sign = 1 if higher_better else -1
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front, best = [], -math.inf
    for i in order:
        q = sign * points[i][1]
        if q > best:
            front.append(i)
            best = q
    return front


def pareto(comp: Comparison, path: Path) -> Path:
    import matplotlib.pyplot as plt

    metric = comp.metrics[0]
    better = higher_is_better(metric)
    rows = plot_rows(comp.rows)
    many = _many_datasets(rows)
    pts = [r for r in rows if r["metrics"][metric]["n"] and r["cost_per_1k_users"] is not None
           and math.isfinite(r["cost_per_1k_users"])]
    fig, ax = plt.subplots(figsize=(10, 6.5))
    datasets = sorted({r["dataset"] for r in pts})
    markers = dict(zip(datasets, "osD^vP*", strict=False))
    styles = dict(zip(datasets, ["--", ":", "-.", (0, (5, 1, 1, 1))] * 2, strict=False))
    for r in pts:
        s = r["metrics"][metric]
        x = max(r["cost_per_1k_users"], 1e-4)
        ax.errorbar([x], [s["mean"]], yerr=yerr(s["mean"], s["ci95"], metric), fmt=markers.get(r["dataset"], "o"),
                    markersize=8, color=QUADRANT_COLOURS.get(r["quadrant"], "#333333"), markeredgecolor="black",
                    capsize=3)
        ax.annotate(_short(r, many), (x, s["mean"]), xytext=(6, 6), textcoords="offset points", fontsize=9)
    for dataset in datasets:
        mine = [r for r in pts if r["dataset"] == dataset]
        xy = [(max(r["cost_per_1k_users"], 1e-4), r["metrics"][metric]["mean"]) for r in mine]
        front = [xy[i] for i in pareto_front(xy, better)]
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black",
                linestyle=styles[dataset], linewidth=1.2, alpha=0.7)
        ax.plot([], [], marker=markers[dataset], color="black", markerfacecolor="white", linestyle=styles[dataset],
                label=f"{dataset}: Pareto frontier" if many else "Pareto frontier")
    if not pts:
        ax.text(0.5, 0.5, "no finished runs with timings and n_users", ha="center", va="center",
                transform=ax.transAxes, color="#999999")
    else:
        ax.set_xscale("log")
        ax.margins(x=0.15, y=0.12)
    for q in sorted({r["quadrant"] for r in pts}, key=lambda q: ("baseline", "1", "2", "3", "4").index(q)
                    if q in QUADRANT_COLOURS else 9):
        ax.scatter([], [], color=QUADRANT_COLOURS.get(q, "#333333"), edgecolor="black",
                   label="baseline (no LLM)" if q == "baseline" else f"quadrant {q}")
    ax.set_xlabel("cost: seconds per 1,000 users (fit + eval, or GPU seconds when logged; log scale)")
    ax.set_ylabel(f"{metric} (mean ± 95% CI over seeds" + (", clipped to [0, 1])" if bounded(metric) else ")"))
    ax.set_title(f"Quality vs cost: {metric}" + ("" if better else " (lower is better)")
                 + f"\n{protocol_title(rows)}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9, frameon=False)
    return _save(fig, path)
