"""`llmrec compare` internals on hand-made run frames: selection, grouping, CIs, paired tests, formats, plots."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from llmrec_cli.errors import LlmrecError
from llmrec_cli.report import plots, render
from llmrec_cli.report.compare import Comparison, abbreviate, add_significance, aggregate, choose_references
from llmrec_cli.report.select import Selection, add_groups, filter_runs, group_label, parse_tag_filters
from llmrec_cli.report.stats import ci_halfwidth, paired_pvalue, paired_test, summarize, user_means

M = "test/full/ndcg_10"
METRICS = [M, "test/pointwise/auc"]
LONG_ERROR = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"


def run(run_id, quadrant="baseline", method="baseline", model="none", crm="pop", seed=0, status="FINISHED",
        ndcg=None, auc=None, dataset="synthetic", **extra):
    row = {"run_id": run_id, "status": status, "tags.quadrant": quadrant, "tags.method": method,
           "tags.model": model, "tags.crm": crm, "tags.dataset": dataset, "tags.seed": str(seed),
           "tags.n_users": "200", f"metrics.{M}": ndcg, "metrics.test/pointwise/auc": auc,
           "metrics.time/fit_seconds": {"pop": 0.01, "bpr": 1.0, "sasrec": 5.0}.get(crm, 20.0)
           if status == "FINISHED" else None,
           "metrics.time/eval_seconds": 1.0 if status == "FINISHED" else None}
    row.update(extra)
    return row


def make_runs() -> pd.DataFrame:
    rows = [
        *(run(f"pop{s}", crm="pop", seed=s, ndcg=v, auc=0.5) for s, v in enumerate([0.05, 0.06, 0.07])),
        *(run(f"bpr{s}", crm="bpr", seed=s, ndcg=v, auc=0.6) for s, v in enumerate([0.10, 0.12, 0.11])),
        *(run(f"sas{s}", crm="sasrec", seed=s, ndcg=v, auc=0.8) for s, v in enumerate([0.30, 0.28, 0.29])),
        run("sas3", crm="sasrec", seed=3, status="RUNNING"),
        *(run(f"zs{s}", quadrant="3", method="zero_shot", model="smollm2", crm="none", seed=s, ndcg=v,
              **{"params.model.num_parameters": "135000000"}) for s, v in enumerate([0.12, 0.13])),
        run("collm0", quadrant="1", method="collm", model="smollm2", crm="sasrec", ndcg=0.33,
            **{"metrics.cost/gpu_seconds": 400.0, "tags.model.num_parameters": "1.7e9"}),
        run("tall0", quadrant="4", method="tallrec", model="smollm2", crm="none", status="FAILED",
            **{"tags.error": LONG_ERROR}),
        run("tall1", quadrant="4", method="tallrec", model="smollm2", crm="none", status="KILLED",
            **{"tags.error": "interrupted (KeyboardInterrupt)"}),
        run("reeval", crm="pop", ndcg=0.5, **{"tags.source_run": "pop0"}),
        {"run_id": "parent", "status": "FINISHED", "tags.sweep": "true"},
        {"run_id": "foreign", "status": "FINISHED"},
    ]
    df = pd.DataFrame(rows)
    df["tags.mlflow.parentRunId"] = [None] * (len(df) - 2) + [None, None]
    df.loc[df["run_id"].str.startswith(("pop", "bpr")), "tags.mlflow.parentRunId"] = "parent"
    return df


def selected(sel: Selection | None = None) -> pd.DataFrame:
    df, _ = filter_runs(make_runs(), sel or Selection())
    return add_groups(df)


def by_group(rows):
    return {r["group"]: r for r in rows}


def test_group_labels():
    assert group_label("baseline", "baseline", "none", "sasrec") == "sasrec"
    assert group_label("3", "zero_shot", "smollm2", "none") == "q3/zero_shot/smollm2"
    assert group_label("2", "kar", "smollm2", "sasrec") == "q2/kar/smollm2/sasrec"
    assert set(selected()["group"]) == {"pop", "bpr", "sasrec", "q3/zero_shot/smollm2",
                                        "q1/collm/smollm2/sasrec", "q4/tallrec/smollm2"}


def test_filter_drops_sweep_parents_foreign_runs_and_reevals():
    df, notes = filter_runs(make_runs(), Selection())
    assert not {"parent", "foreign", "reeval"} & set(df["run_id"])
    assert any("re-evaluation" in n for n in notes) and any("without llmrec tags" in n for n in notes)
    df, _ = filter_runs(make_runs(), Selection(include_reevals=True))
    assert "reeval" in set(df["run_id"])


def test_filter_options():
    assert set(selected(Selection(parent="parent"))["crm"]) == {"pop", "bpr"}
    assert set(selected(Selection(tags={"crm": "bpr", "seed": "1"}))["run_id"]) == {"bpr1"}
    assert set(selected(Selection(statuses=["failed", "KILLED"]))["run_id"]) == {"tall0", "tall1"}
    assert len(selected(Selection(dataset=["ml-1m"]))) == 0
    assert parse_tag_filters(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(LlmrecError, match="KEY=VALUE"):
        parse_tag_filters(["novalue"])
    with pytest.raises(LlmrecError, match="status"):
        filter_runs(make_runs(), Selection(statuses=["DONE"]))


def test_ci_halfwidth_matches_scipy_interval():
    x = np.array([0.30, 0.28, 0.29, 0.35])
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert ci_halfwidth(x) == pytest.approx((hi - lo) / 2)
    assert math.isnan(ci_halfwidth([0.3]))
    s = summarize([0.3, float("nan"), None])
    assert s["n"] == 1 and s["mean"] == pytest.approx(0.3) and math.isnan(s["std"]) and math.isnan(s["ci95"])


def test_aggregate_counts_statuses_and_only_finished_runs_enter_the_statistics():
    rows = by_group(aggregate(selected(), METRICS))
    sas = rows["sasrec"]
    assert sas["runs"] == {"finished": 3, "failed": 0, "killed": 0, "running": 1}
    x = [0.30, 0.28, 0.29]
    assert sas["metrics"][M]["n"] == 3
    assert sas["metrics"][M]["mean"] == pytest.approx(np.mean(x))
    assert sas["metrics"][M]["std"] == pytest.approx(np.std(x, ddof=1))
    assert sas["metrics"][M]["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * stats.sem(x))
    assert sas["cost_per_1k_users"] == pytest.approx((5.0 + 1.0) / 200 * 1000)
    assert rows["q1/collm/smollm2/sasrec"]["cost_per_1k_users"] == pytest.approx(400 / 200 * 1000)
    one = rows["q1/collm/smollm2/sasrec"]["metrics"][M]
    assert one["n"] == 1 and math.isnan(one["ci95"])
    assert rows["q3/zero_shot/smollm2"]["num_parameters"] == pytest.approx(1.35e8)
    # row order: baselines pop < bpr < sasrec, then quadrants 1..4
    assert [r["group"] for r in aggregate(selected(), METRICS)][:4] == ["pop", "bpr", "sasrec",
                                                                        "q1/collm/smollm2/sasrec"]


def test_failed_only_group_is_shown_with_its_error_abbreviated():
    row = by_group(aggregate(selected(), METRICS))["q4/tallrec/smollm2"]
    assert row["runs"] == {"finished": 0, "failed": 1, "killed": 1, "running": 0}
    assert row["metrics"][M]["n"] == 0 and math.isnan(row["metrics"][M]["mean"])
    assert row["error"].startswith("interrupted") or row["error"].startswith("OutOfMemoryError")
    assert row["error"].endswith("(+1 other)") and len(row["error"]) < 70
    assert abbreviate(LONG_ERROR, 20) == LONG_ERROR[:19] + "…"


def test_reference_choice():
    runs = selected()
    rows = aggregate(runs, METRICS)
    assert choose_references(rows, runs, None, M) == {"synthetic": "sasrec"}
    assert choose_references(rows, runs, "bpr", M) == {"synthetic": "bpr"}
    assert choose_references(rows, runs, "zero_shot", M) == {"synthetic": "q3/zero_shot/smollm2"}
    assert choose_references(rows, runs, "pop1", M) == {"synthetic": "pop"}
    with pytest.raises(LlmrecError, match="matches no group"):
        choose_references(rows, runs, "nonesuch", M)
    no_sasrec = runs[runs["crm"].isin(["pop", "bpr"])]
    rows = aggregate(no_sasrec, METRICS)
    assert choose_references(rows, no_sasrec, None, M) == {"synthetic": "bpr"}  # best on the first metric


def per_user_frame(seed: int, shift: float, users=range(30), split="test", protocol="full"):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user_id": [str(u) for u in users], "split": split, "protocol": protocol,
                         "ndcg_10": np.clip(rng.random(len(users)) * 0.5 + shift, 0, 1)})


def test_paired_pvalue_equals_scipy_on_seed_averaged_pairs():
    a = [per_user_frame(0, 0.1), per_user_frame(1, 0.1, users=range(5, 30))]
    b = [per_user_frame(2, 0.0, users=range(0, 25)), per_user_frame(9, 0.0, split="valid")]
    p, n = paired_pvalue(a, b, M, "ttest")
    ua = pd.concat([f[["user_id", "ndcg_10"]] for f in a]).groupby("user_id")["ndcg_10"].mean()
    ub = b[0].set_index("user_id")["ndcg_10"]
    common = ua.index.intersection(ub.index)
    assert n == len(common) == 25
    assert p == pytest.approx(stats.ttest_rel(ua.loc[common], ub.loc[common]).pvalue)
    assert user_means(b, "test", "full", "ndcg_10").index.equals(ub.sort_index().index)
    assert math.isnan(paired_pvalue(a, b, "test/pointwise/auc", "ttest")[0])  # no per-user AUC


def test_permutation_test_matches_scipy_and_degenerate_cases():
    rng = np.random.default_rng(3)
    x, y = rng.random(40), rng.random(40) * 0.8
    ref = stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                                 permutation_type="samples", n_resamples=999, rng=np.random.default_rng(0))
    assert paired_test(x, y, "permutation", n_resamples=999, seed=0) == pytest.approx(ref.pvalue)
    assert paired_test(x, x, "ttest") == 1.0
    assert math.isnan(paired_test([0.1], [0.2]))
    with pytest.raises(ValueError):
        paired_test(x, y, "wilcoxon")


def comparison(test: str = "ttest") -> Comparison:
    runs = selected()
    rows = aggregate(runs, METRICS)
    refs = choose_references(rows, runs, None, M)
    frames = {rid: per_user_frame(i, 0.3 if rid.startswith("sas") else 0.0) for i, rid in enumerate(runs["run_id"])}
    add_significance(rows, refs, METRICS, test, frames.get)
    return Comparison(rows=rows, metrics=METRICS, runs=runs, test=test)


def test_significance_against_the_reference():
    rows = by_group(comparison().rows)
    assert rows["sasrec"]["is_reference"] and rows["pop"]["reference"] == "sasrec"
    pop = rows["pop"]["metrics"][M]
    assert pop["significant"] and pop["p"] < 0.05 and pop["n_users"] == 30
    assert pop["delta"] == pytest.approx(0.06 - 0.29)
    assert math.isnan(rows["pop"]["metrics"]["test/pointwise/auc"]["p"])
    assert math.isnan(rows["q4/tallrec/smollm2"]["metrics"][M]["p"])


def test_json_csv_markdown_and_table():
    comp = comparison()
    rows = json.loads(render.to_json(comp))
    assert isinstance(rows, list) and len(rows) == 6
    failed = next(r for r in rows if r["group"] == "q4/tallrec/smollm2")
    assert failed["metrics"][M]["mean"] is None and failed["runs"]["failed"] == 1
    table = list(csv.DictReader(io.StringIO(render.to_csv(comp))))
    assert [r["group"] for r in table][:3] == ["pop", "bpr", "sasrec"]
    assert float(table[2][f"{M}.mean"]) == pytest.approx(0.29) and table[0][f"{M}.significant"] == "True"
    md = render.to_markdown(comp)
    lines = md.splitlines()
    assert lines[0].startswith("| group | dataset | runs | test/full/ndcg_10") and "error" in lines[0]
    assert "0.2900 ± 0.0248 ref" in md and "p=<0.001\\*" in md and "1 failed, 1 killed" in md
    assert "0.3300 ± —" in md  # one run: no CI
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(render.rich_table(comp))
    text = console.export_text()
    assert "q3/zero_shot/smollm2" in text and "OutOfMemoryError" in text


def test_plots_render(tmp_path):
    comp = comparison()
    rows = by_group(comp.rows)
    assert plots.strongest_beaten(rows["q3/zero_shot/smollm2"], comp.rows, M) == "bpr"
    assert plots.strongest_beaten(rows["q1/collm/smollm2/sasrec"], comp.rows, M) == "sasrec"
    assert plots.marker_size(None) == plots.DEFAULT_SIZE < plots.marker_size(7e9)
    assert plots.pareto_front([(1, 0.1), (2, 0.05), (3, 0.3), (0.5, 0.1)]) == [3, 2]
    paths = plots.write_plots(comp, tmp_path / "plots")
    assert [p.name for p in paths] == ["quadrant_map.png", "pareto.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_method_variants_are_separate_groups():
    from llmrec_cli.report.select import add_groups

    base = {"tags.quadrant": "3", "tags.method": "zero_shot", "tags.model": "smollm2", "tags.crm": "none",
            "tags.dataset": "ml-100k"}
    df = pd.DataFrame([{**base, "params.method.scoring": "listwise", "params.method.num_samples": "None"},
                       {**base, "params.method.scoring": "likelihood", "params.candidates.source": "crm_topk"},
                       {**base, "tags.quadrant": "baseline", "tags.method": "baseline", "tags.crm": "sasrec",
                        "tags.model": "none", "params.candidates.source": "sampled"}])
    assert add_groups(df)["group"].tolist() == ["q3/zero_shot/smollm2 [scoring=listwise]",
                                                "q3/zero_shot/smollm2 [scoring=likelihood,candidates=crm_topk]",
                                                "sasrec"]
