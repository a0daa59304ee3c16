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

from llmrec_cli.errors import ConfigError, LlmrecError
from llmrec_cli.report import plots, render
from llmrec_cli.report.compare import (
    DEFAULT_METRICS,
    Comparison,
    abbreviate,
    add_significance,
    aggregate,
    choose_references,
    correct_pvalues,
)
from llmrec_cli.report.select import Selection, add_groups, filter_runs, group_label, parse_tag_filters
from llmrec_cli.report.stats import (
    ci_halfwidth,
    paired_pvalue,
    paired_test,
    parse_metric,
    require_same_candidate_sets,
    summarize,
    user_means,
)

M = "test/full/ndcg_10"
METRICS = [M, "test/pointwise/auc"]
LONG_ERROR = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"


def run(run_id, quadrant="baseline", method="baseline", model="none", crm="pop", seed=0, status="FINISHED",
        ndcg=None, auc=None, dataset="synthetic", **extra):
    row = {"run_id": run_id, "status": status, "tags.quadrant": quadrant, "tags.method": method,
           "tags.model": model, "tags.crm": crm, "tags.dataset": dataset, "tags.seed": str(seed),
           "tags.n_users": "200", "tags.candidate_set_hash": f"cs{seed}", f"metrics.{M}": ndcg,
           "metrics.test/pointwise/auc": auc,
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
    key = ("synthetic", runs["protocol_hash"].iloc[0])  # references are per (dataset, protocol)
    assert runs["protocol_hash"].nunique() == 1
    assert choose_references(rows, runs, None, M) == {key: "sasrec"}
    assert choose_references(rows, runs, "bpr", M) == {key: "bpr"}
    assert choose_references(rows, runs, "zero_shot", M) == {key: "q3/zero_shot/smollm2"}
    assert choose_references(rows, runs, "pop1", M) == {key: "pop"}
    with pytest.raises(LlmrecError, match="matches no group"):
        choose_references(rows, runs, "nonesuch", M)
    no_sasrec = runs[runs["crm"].isin(["pop", "bpr"])]
    rows = aggregate(no_sasrec, METRICS)
    assert choose_references(rows, no_sasrec, None, M) == {key: "bpr"}  # best on the first metric


def per_user_frame(seed: int, shift: float, users=range(30), split="test", protocol="full"):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user_id": [str(u) for u in users], "split": split, "protocol": protocol,
                         "ndcg_10": np.clip(rng.random(len(users)) * 0.5 + shift, 0, 1)})


def test_paired_pvalue_equals_scipy_on_seed_averaged_pairs():
    a = [per_user_frame(0, 0.1), per_user_frame(1, 0.1, users=range(5, 30))]
    b = [per_user_frame(2, 0.0, users=range(0, 25)), per_user_frame(9, 0.0, split="valid")]
    p, n, k = paired_pvalue(a, b, M, "ttest", sets_a=["cs0", "cs0"], sets_b=["cs0", "cs0"])  # reruns of one set
    assert k == 1
    ua = pd.concat([f[["user_id", "ndcg_10"]] for f in a]).groupby("user_id")["ndcg_10"].mean()
    ub = b[0].set_index("user_id")["ndcg_10"]
    common = ua.index.intersection(ub.index)
    assert n == len(common) == 25
    assert p == pytest.approx(stats.ttest_rel(ua.loc[common], ub.loc[common]).pvalue)
    assert user_means(b, "test", "full", "ndcg_10").index.equals(ub.sort_index().index)
    assert math.isnan(paired_pvalue(a, b, "test/pointwise/auc", "ttest", sets_a=["cs0"] * 2,
                                    sets_b=["cs0"] * 2)[0])  # pooled AUC: not per user


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
    assert lines[0].startswith("| group | dataset | protocol | users | cands | runs | test/full/ndcg_10")
    assert "error" in lines[0]
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


# ---- protocols: never pool incomparable runs -------------------------------------------------------------

P20 = "ml-100k/5core/loo · 20c/943u"
P100 = "ml-100k/5core/loo · 100c/200u"


def proto(label: str, phash: str, users: int, cands: int) -> dict:
    """The protocol tags a run carries (set at run time)."""
    return {"tags.protocol": label, "tags.protocol_hash": phash, "tags.n_eval_users": str(users),
            "tags.n_candidates": str(cands)}


PROTO_20, PROTO_100 = proto(P20, "p20aaaa", 943, 20), proto(P100, "p100bbb", 200, 100)
ZS = {"quadrant": "3", "method": "zero_shot", "model": "smollm2", "crm": "none"}


def ml_run(run_id, seed, ndcg, protocol, **kw):
    """A run on ml-100k on `protocol`; keyword `cs` overrides the candidate set (default cs{seed})."""
    cs = kw.pop("cs", f"cs{seed}")
    fields = {k: kw.pop(k) for k in ("quadrant", "method", "model", "crm", "status") if k in kw}
    return run(run_id, seed=seed, ndcg=ndcg, dataset="ml-100k", **fields,
               **{**protocol, "tags.candidate_set_hash": cs, **kw})


def test_runs_on_two_protocols_are_two_rows_never_one_mean():
    df = pd.DataFrame([ml_run("all", 0, 0.90, PROTO_20, **ZS), ml_run("sub", 0, 0.23, PROTO_100, **ZS)])
    rows = aggregate(add_groups(df), METRICS)
    assert len(rows) == 2
    by = {r["protocol"]: r for r in rows}
    assert set(by) == {P20, P100}
    assert by[P20]["metrics"][M]["n"] == 1 and by[P20]["metrics"][M]["mean"] == pytest.approx(0.90)
    assert by[P100]["metrics"][M]["n"] == 1 and by[P100]["metrics"][M]["mean"] == pytest.approx(0.23)
    assert (by[P20]["users"], by[P20]["cands"]) == (943, 20)
    assert (by[P100]["users"], by[P100]["cands"]) == (200, 100)
    assert by[P20]["protocol_hash"] == "p20aaaa" and by[P20]["group"] == by[P100]["group"]


def test_protocol_users_and_cands_are_columns_in_every_format():
    runs = add_groups(pd.DataFrame([ml_run("all", 0, 0.90, PROTO_20, **ZS), ml_run("sub", 0, 0.23, PROTO_100, **ZS)]))
    comp = Comparison(rows=aggregate(runs, METRICS), metrics=METRICS, runs=runs, test="ttest")
    md = render.to_markdown(comp)
    assert md.splitlines()[0].startswith("| group | dataset | protocol | users | cands | runs |")
    assert f"| {P20} | 943 | 20 |" in md and f"| {P100} | 200 | 100 |" in md
    table = {r["protocol"]: r for r in csv.DictReader(io.StringIO(render.to_csv(comp)))}
    assert set(table) == {P20, P100} and (table[P20]["users"], table[P20]["cands"]) == ("943", "20")
    assert float(table[P100][f"{M}.mean"]) == pytest.approx(0.23)
    rows = {r["protocol"]: r for r in json.loads(render.to_json(comp))}
    assert set(rows) == {P20, P100} and rows[P100]["users"] == 200 and rows[P100]["cands"] == 100
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(render.rich_table(comp))
    text = console.export_text()
    assert P20 in text and P100 in text and "cands" in text


def test_seeds_of_one_protocol_aggregate_although_their_candidate_sets_differ():
    df = pd.DataFrame([ml_run(f"zs{s}", s, v, PROTO_20, **ZS) for s, v in enumerate([0.2, 0.3, 0.4])])
    runs = add_groups(df)
    assert runs["candidate_set_hash"].nunique() == 3
    rows = aggregate(runs, METRICS)
    assert len(rows) == 1
    row = rows[0]
    assert row["protocol"] == P20 and row["metrics"][M]["n"] == 3
    assert row["metrics"][M]["mean"] == pytest.approx(0.3)
    assert row["finished_candidate_sets"] == ["cs0", "cs1", "cs2"] and row["finished_seeds"] == ["0", "1", "2"]


def test_one_label_for_two_protocol_hashes_gets_a_hash_suffix():
    df = pd.DataFrame([ml_run("a", 0, 0.2, proto(P20, "3fa2aaaa", 943, 20), **ZS),
                       ml_run("b", 0, 0.3, proto(P20, "91bcbbbb", 943, 20), **ZS)])
    runs = add_groups(df)
    assert sorted(set(runs["protocol"])) == [f"{P20} #3fa2", f"{P20} #91bc"]
    assert len(aggregate(runs, METRICS)) == 2


def legacy_run(run_id, seed=0, num_negatives="19", max_users="None", users=943.0, **extra):
    """A run logged before the protocol tags existed: only params, dataset_hash and n_users metrics."""
    row = run(run_id, crm="sasrec", seed=seed, ndcg=0.3, dataset="ml-100k",
              **{"tags.dataset_hash": "d1", "params.dataset.name": "ml-100k", "params.dataset.kcore": "5",
                 "params.eval.num_negatives": num_negatives, "params.eval.negative_sampling": "uniform",
                 "params.eval.pointwise_negatives": "1", "params.eval.like_threshold": "4.0",
                 "params.eval.max_users": max_users, "metrics.test/sampled/n_users": users})
    row.update(extra)
    return row


def test_fallback_protocol_for_runs_without_the_new_tags():
    df = pd.DataFrame([
        legacy_run("a", 0), legacy_run("b", 1),
        legacy_run("e", 2, **{"metrics.test/sampled/n_users": None, "metrics.test/full/n_users": 943.0}),
        legacy_run("c", 0, num_negatives="99"),
        legacy_run("d", 0, max_users="200", users=200.0),
        legacy_run("f", 0, **{"params.dataset.split": "ratio"}),
    ])
    g = add_groups(df).set_index("run_id")
    assert g.loc["a", "protocol"] == "ml-100k/5core/loo · 20c/943u"
    assert (g.loc["a", "n_candidates"], g.loc["a", "n_eval_users"], g.loc["e", "n_eval_users"]) == (20, 943, 943)
    assert g.loc["a", "protocol_hash"] == g.loc["b", "protocol_hash"] == g.loc["e", "protocol_hash"]
    assert g.loc["c", "protocol"] == "ml-100k/5core/loo · 100c/943u"
    assert g.loc["d", "protocol"] == "ml-100k/5core/loo · 20c/200u"
    assert g.loc["f", "protocol"] == "ml-100k/5core/ratio · 20c/943u"
    assert g["protocol_hash"].nunique() == 4
    rows = aggregate(add_groups(df), METRICS)
    assert sorted(r["metrics"][M]["n"] for r in rows) == [1, 1, 1, 3]
    # another prepared dataset (dataset_hash) under the same settings: another protocol, kept apart by a suffix
    two = add_groups(pd.DataFrame([legacy_run("a"), legacy_run("x", **{"tags.dataset_hash": "d2"})]))
    assert two["protocol_hash"].nunique() == 2 and two["protocol"].nunique() == 2
    assert all(p.startswith("ml-100k/5core/loo · 20c/943u #") for p in two["protocol"])


def paired_setup(correction: str = "none"):
    """sasrec seeds 0-2; zero_shot seeds 0,1 (both shared); collm seeds 0,5 (one shared); tallrec seed 3 (none)."""
    df = pd.DataFrame([
        *(ml_run(f"sas{s}", s, 0.3, PROTO_20, crm="sasrec") for s in range(3)),
        *(ml_run(f"zs{s}", s, 0.1, PROTO_20, **ZS) for s in range(2)),
        *(ml_run(f"collm{s}", s, 0.2, PROTO_20, quadrant="1", method="collm", model="smollm2", crm="sasrec")
          for s in (0, 5)),
        ml_run("tall3", 3, 0.2, PROTO_20, quadrant="4", method="tallrec", model="smollm2", crm="none"),
    ])
    runs = add_groups(df)
    rows = aggregate(runs, METRICS)
    refs = choose_references(rows, runs, None, M)
    frames = {rid: per_user_frame(i, 0.1 if rid.startswith("sas") else 0.0) for i, rid in enumerate(runs["run_id"])}
    notes = add_significance(rows, refs, METRICS, "ttest", frames.get, correction)
    return by_group(rows), frames, notes


def test_paired_test_pairs_only_matched_candidate_sets():
    rows, frames, notes = paired_setup()
    ndcg = {g: r["metrics"][M] for g, r in rows.items()}

    def users(*ids):
        return pd.concat([frames[i].set_index("user_id")["ndcg_10"] for i in ids], axis=1).mean(axis=1)

    zs, collm, tall = ndcg["q3/zero_shot/smollm2"], ndcg["q1/collm/smollm2/sasrec"], ndcg["q4/tallrec/smollm2"]
    assert zs["n_candidate_sets"] == 2 and zs["n_users"] == 30
    assert zs["p_raw"] == pytest.approx(stats.ttest_rel(users("zs0", "zs1"), users("sas0", "sas1")).pvalue)
    assert collm["n_candidate_sets"] == 1  # only seed 0 shares a candidate set with sasrec
    assert collm["p_raw"] == pytest.approx(stats.ttest_rel(users("collm0"), users("sas0")).pvalue)
    assert math.isnan(tall["p"]) and math.isnan(tall["p_raw"]) and not tall["significant"]
    assert tall["n_candidate_sets"] == 0 and tall["n_users"] == 0
    assert tall["delta"] == pytest.approx(0.2 - 0.3)  # the means still compare
    assert f"q4/tallrec/smollm2 vs sasrec ({P20}): not paired, their runs share no candidate set " \
           "(seeds 3 vs 0,1,2)" in notes
    partial = [n for n in notes if n.startswith("q1/collm/smollm2/sasrec vs sasrec")]
    assert len(partial) == 1 and "paired on 1 candidate set" in partial[0] and "seeds 5 vs 1,2" in partial[0]
    zs_note = [n for n in notes if n.startswith("q3/zero_shot/smollm2 vs sasrec")]  # sasrec's seed 2 is left out
    assert len(zs_note) == 1 and "paired on 2 candidate sets" in zs_note[0] and "seeds none vs 2" in zs_note[0]
    assert len(notes) == 3
    assert all("\n" not in n for n in notes)


def test_pairing_runs_of_different_candidate_sets_is_refused():
    a, b = [per_user_frame(0, 0.1)], [per_user_frame(1, 0.0)]
    with pytest.raises(LlmrecError, match="cs_aaa.*cs_bbb") as err:
        paired_pvalue(a, b, M, "ttest", sets_a=["cs_aaa"], sets_b=["cs_bbb"])
    assert "\n" not in str(err.value)
    with pytest.raises(LlmrecError, match="candidate"):
        require_same_candidate_sets(["cs0", "cs1"], ["cs0"])
    assert require_same_candidate_sets(["cs1", "cs0", "cs1"], ["cs0", "cs1"]) == ["cs0", "cs1"]
    p, n, k = paired_pvalue(a, b, M, "ttest", sets_a=["cs_aaa"], sets_b=["cs_aaa"])
    assert n == 30 and k == 1 and 0 <= p <= 1


def family_row(group: str, p_raw: float, protocol_hash: str = "p20", ref: str = "sasrec") -> dict:
    return {"group": group, "dataset": "ml-100k", "protocol_hash": protocol_hash, "reference": ref,
            "is_reference": group == ref,
            "metrics": {M: {"p_raw": p_raw, "p": p_raw, "significant": bool(p_raw < 0.05)}}}


def test_holm_and_bh_adjust_each_family_like_statsmodels():
    from statsmodels.stats.multitest import multipletests

    raw = [0.01, 0.02, 0.04, 0.30]

    def family(correction):
        rows = [family_row("sasrec", math.nan), *(family_row(f"m{i}", p) for i, p in enumerate(raw)),
                family_row("other", math.nan), family_row("alone", 0.02, protocol_hash="p100")]
        correct_pvalues(rows, [M], correction)
        return {r["group"]: r["metrics"][M] for r in rows}

    for correction, method in (("holm", "holm"), ("bh", "fdr_bh")):
        got = family(correction)
        want = multipletests(raw, method=method)[1]
        assert [got[f"m{i}"]["p"] for i in range(4)] == pytest.approx(list(want))
        assert [got[f"m{i}"]["p_raw"] for i in range(4)] == raw
        assert [got[f"m{i}"]["significant"] for i in range(4)] == [bool(p < 0.05) for p in want]
        assert got["alone"]["p"] == pytest.approx(0.02)  # another protocol's reference: a family of one
        assert math.isnan(got["other"]["p"]) and math.isnan(got["sasrec"]["p"])
    holm = family("holm")
    assert [holm[f"m{i}"]["significant"] for i in range(4)] == [True, False, False, False]  # raw 0.02, 0.04 fail
    none = family("none")
    assert [none[f"m{i}"]["p"] for i in range(4)] == raw
    assert [none[f"m{i}"]["significant"] for i in range(4)] == [True, True, True, False]
    with pytest.raises(ConfigError, match="--correction.*holm, bh, none"):
        correct_pvalues([], [M], "bonferroni")


def test_correction_is_applied_by_add_significance_and_named_in_the_caption():
    from statsmodels.stats.multitest import multipletests

    rows, _, _ = paired_setup("holm")
    tested = [r["metrics"][M] for r in rows.values() if math.isfinite(r["metrics"][M]["p_raw"])]
    assert len(tested) == 2
    want = multipletests([m["p_raw"] for m in tested], method="holm")[1]
    assert [m["p"] for m in tested] == pytest.approx(list(want))
    comp = Comparison(rows=list(rows.values()), metrics=METRICS, runs=None, test="ttest", correction="bh")
    assert "Benjamini-Hochberg" in render.caption(comp)
    assert "Holm" in render.caption(Comparison(rows=[], metrics=METRICS, runs=None, test="ttest"))


def gauc_frame(seed: int, shift: float, users=range(40)):
    """Per-user rows of the pointwise protocol: one AUC per user in column `gauc`."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user_id": [str(u) for u in users], "split": "test", "protocol": "pointwise",
                         "gauc": np.clip(rng.random(len(users)) * 0.4 + 0.3 + shift, 0, 1)})


def test_pointwise_gauc_is_paired_from_per_user_rows():
    a = [pd.concat([per_user_frame(0, 0.1), gauc_frame(0, 0.1)], ignore_index=True)]
    b = [pd.concat([per_user_frame(1, 0.0), gauc_frame(1, 0.0)], ignore_index=True)]
    p, n, k = paired_pvalue(a, b, "test/pointwise/gauc", "ttest", sets_a=["cs0"], sets_b=["cs0"])
    ua, ub = gauc_frame(0, 0.1)["gauc"], gauc_frame(1, 0.0)["gauc"]
    assert n == 40 and k == 1 and p == pytest.approx(stats.ttest_rel(ua, ub).pvalue)
    assert parse_metric("test/pointwise/gauc") == ("test", "pointwise", "gauc")
    assert parse_metric("test/pointwise/auc") is None and parse_metric("test/like/auc") is None
    assert DEFAULT_METRICS == ("test/full/ndcg_10", "test/full/hr_10", "test/sampled/ndcg_10",
                               "test/pointwise/gauc", "test/like/auc")


def test_plots_show_one_protocol_per_dataset(tmp_path):
    df = pd.DataFrame([
        *(ml_run(f"sas{s}", s, 0.3, PROTO_20, crm="sasrec") for s in range(3)),
        *(ml_run(f"zs{s}", s, 0.1, PROTO_20, **ZS) for s in range(2)),
        ml_run("sas100", 0, 0.5, PROTO_100, crm="sasrec"), ml_run("zs100", 0, 0.6, PROTO_100, **ZS),
    ])
    runs = add_groups(df)
    comp = Comparison(rows=aggregate(runs, METRICS), metrics=METRICS, runs=runs, test="none")
    assert plots.plot_protocols(comp.rows) == {"ml-100k": "p20aaaa"}  # the one with the most finished runs
    shown = plots.plot_rows(comp.rows)
    assert {r["protocol"] for r in shown} == {P20} and len(shown) == 2
    assert plots.left_out_protocols(comp.rows) == [P100]
    assert P20 in plots.protocol_title(shown)
    zs = next(r for r in shown if r["quadrant"] == "3")
    assert plots.strongest_beaten(zs, comp.rows, M) == "none"  # the 100-candidate sasrec is not its baseline
    paths = plots.write_plots(comp, tmp_path / "plots")
    assert all(p.stat().st_size > 5000 for p in paths)


def test_reruns_and_resumes_of_one_seed_count_once_as_the_newest_finished_run():
    from llmrec_cli.report.select import collapse_duplicates

    rows = [run("a0", crm="sasrec", seed=0, ndcg=0.30, start_time=pd.Timestamp("2026-01-01", tz="UTC")),
            run("b0", crm="sasrec", seed=0, ndcg=0.40, start_time=pd.Timestamp("2026-01-03", tz="UTC")),  # rerun
            run("c0", crm="sasrec", seed=0, status="KILLED", start_time=pd.Timestamp("2026-01-04", tz="UTC")),
            run("a1", crm="sasrec", seed=1, ndcg=0.20, start_time=pd.Timestamp("2026-01-01", tz="UTC")),
            run("f2", crm="sasrec", seed=2, status="FAILED", start_time=pd.Timestamp("2026-01-01", tz="UTC")),
            run("g2", crm="sasrec", seed=2, status="FAILED", start_time=pd.Timestamp("2026-01-02", tz="UTC"))]
    grouped = add_groups(pd.DataFrame(rows))
    kept, aside = collapse_duplicates(grouped)
    assert sorted(kept["run_id"]) == ["a1", "b0", "g2"]  # newest FINISHED per seed, else the newest run
    assert list(aside.values()) == [3]
    row = aggregate(kept, [M])[0]
    assert row["metrics"][M]["n"] == 2 and row["metrics"][M]["mean"] == pytest.approx(0.30)  # seeds 0 and 1
    assert render.fmt_runs(row["runs"], 3) == "2 ok, 1 failed (+3 dup)"
    everything = aggregate(grouped, [M])[0]  # --keep-duplicates
    assert everything["metrics"][M]["n"] == 3


def test_reevaluations_are_their_own_row_never_extra_seeds():
    rows = [run(f"s{s}", crm="sasrec", seed=s, ndcg=0.3) for s in range(2)]
    rows.append(run("e0", crm="sasrec", seed=0, ndcg=0.5, **{"tags.source_run": "s0"}))
    df, _ = filter_runs(pd.DataFrame(rows), Selection(include_reevals=True))
    labels = add_groups(df).groupby("group")["run_id"].apply(sorted).to_dict()
    assert labels == {"sasrec": ["s0", "s1"], "sasrec [re-eval]": ["e0"]}
