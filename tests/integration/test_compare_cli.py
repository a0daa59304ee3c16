"""`llmrec compare` and `llmrec plot` end to end: pop and bpr over three seeds plus one failed run on synthetic."""
from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest

from tests.integration.test_cli import QUICK, llmrec

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (like the `work` fixture): 6 finished runs and a FAILED one; (path, env)."""
    path = tmp_path_factory.mktemp("compare")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}", "LLMREC_PARENT_RUN_ID": ""}
    jobs = [["train", "quadrant=baseline", f"crm={crm}", f"seed={seed}", *QUICK] for crm in ("pop", "bpr")
            for seed in SEEDS]
    # a SASRec whose hidden size its heads do not divide: it fails while building the model, and its run ends FAILED
    jobs.append(["train", "quadrant=baseline", "crm=sasrec", "crm.hidden=64", "crm.heads=3", *QUICK])
    llmrec(*jobs[0], cwd=path, env_extra=env)  # creates the store before two jobs share it
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda args: llmrec(*args, cwd=path, env_extra=env, check=False), jobs[1:]))
    for args, p in zip(jobs[1:], done, strict=True):
        assert (p.returncode != 0) == ("crm.heads=3" in args), (args, p.stderr[-2000:])
    return path, env


def test_table_shows_every_group_with_ci_p_values_and_the_failed_run(store):
    path, env = store
    p = llmrec("compare", cwd=path, env_extra=env)
    out = p.stdout
    for text in ("pop", "bpr", "sasrec", "synthetic", "1 failed", "divisible", "test/full/ndcg_10", "±", "ref", "p="):
        assert text in out, text
    assert "skipped" not in p.stderr


def test_json_is_valid_and_only_json_on_stdout(store):
    path, env = store
    rows = json.loads(llmrec("compare", "--format", "json", "--baseline", "pop", cwd=path, env_extra=env).stdout)
    by = {(r["group"], r["dataset"]): r for r in rows}
    assert set(by) == {("pop", "synthetic"), ("bpr", "synthetic"), ("sasrec", "synthetic")}
    pop, bpr, failed = by["pop", "synthetic"], by["bpr", "synthetic"], by["sasrec", "synthetic"]
    assert pop["is_reference"] and bpr["reference"] == "pop"
    assert pop["runs"]["finished"] == bpr["runs"]["finished"] == 3
    assert failed["runs"] == {"finished": 0, "failed": 1, "killed": 0, "running": 0}
    assert "divisible" in failed["error"]
    m = bpr["metrics"]["test/full/ndcg_10"]
    assert m["n"] == 3 and 0 <= m["mean"] <= 1 and m["ci95"] >= 0
    assert 0 <= m["p"] <= 1 and m["n_users"] > 0
    assert m["n_candidate_sets"] == 3  # each seed's candidate set is shared by pop and bpr
    assert m["p"] == pytest.approx(m["p_raw"])  # a family of one test: Holm leaves it as is
    assert pop["protocol"] == bpr["protocol"] and pop["protocol_hash"] == bpr["protocol_hash"]
    assert bpr["users"] > 0 and bpr["cands"] > 1
    gauc = bpr["metrics"]["test/pointwise/gauc"]  # per-user AUC: paired once the evaluator logs it
    assert not gauc["n"] or (gauc["n_users"] > 0 and 0 <= gauc["p_raw"] <= 1)
    assert bpr["metrics"]["test/like/auc"]["p"] is None  # pooled AUC: not per user, no paired test


def test_markdown_csv_and_selection_options(store):
    path, env = store
    md = llmrec("compare", "--format", "markdown", "--metric", "test/full/ndcg_10", "--metric", "test/full/mrr_10",
                "--test", "permutation", "--correction", "bh", cwd=path, env_extra=env).stdout
    assert md.startswith("| group | dataset | protocol | users | cands | runs | test/full/ndcg_10 | test/full/mrr_10 |")
    assert "permutation" in md and "Benjamini-Hochberg" in md
    bad = llmrec("compare", "--correction", "bonferroni", cwd=path, env_extra=env, check=False)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert "--correction" in bad.stderr and "holm, bh, none" in bad.stderr
    text = llmrec("compare", "--format", "csv", "--tag", "crm=bpr", "--status", "FINISHED", cwd=path,
                  env_extra=env).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["group"] for r in rows] == ["bpr"] and rows[0]["n_finished"] == "3"
    assert rows[0]["protocol"].startswith("synthetic") and int(rows[0]["users"]) > 0 and int(rows[0]["cands"]) > 1
    bad = llmrec("compare", "--dataset", "ml-1m", cwd=path, env_extra=env, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: no runs match") and len(bad.stderr.splitlines()) == 1


def test_plots_are_written_and_logged_to_a_run(store):
    path, env = store
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("llmrec").experiment_id
    target = client.create_run(exp, run_name="sweep-parent", tags={"sweep": "true"}).info.run_id  # left out
    p = llmrec("compare", "--format", "json", "--plot", str(path / "plots"), "--log-to-run", target,
               cwd=path, env_extra=env)
    json.loads(p.stdout)  # plot messages go to stderr
    for name in ("quadrant_map.png", "pareto.png"):
        png = path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert {a.path for a in client.list_artifacts(target, "compare")} == {"compare/quadrant_map.png",
                                                                          "compare/pareto.png"}
    llmrec("plot", str(path / "plots2"), "--dataset", "synthetic", cwd=path, env_extra=env)
    assert (path / "plots2" / "pareto.png").stat().st_size > 5000


def test_empty_store_is_a_one_line_error(tmp_path):
    p = llmrec("compare", cwd=tmp_path, env_extra={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none.db'}"},
               check=False)
    assert p.returncode == 1 and p.stderr.startswith("error: no MLflow store") and not p.stdout


def test_runs_on_two_protocols_are_two_rows_end_to_end(tmp_path):
    """A 20-candidate all-user run and a 50-candidate 30-user run of the same method are never one mean."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "LLMREC_PARENT_RUN_ID": ""}
    llmrec("train", "quadrant=baseline", "crm=pop", *QUICK, cwd=tmp_path, env_extra=env)
    llmrec("train", "quadrant=baseline", "crm=pop", *QUICK, "eval.num_negatives=49", "eval.max_users=30",
           cwd=tmp_path, env_extra=env)
    rows = json.loads(llmrec("compare", "--format", "json", cwd=tmp_path, env_extra=env).stdout)
    pop = [r for r in rows if r["group"] == "pop"]
    assert len(pop) == 2 and len({r["protocol_hash"] for r in pop}) == 2
    assert sorted((r["cands"], r["users"]) for r in pop)[1] == (50, 30)
    assert all(r["metrics"]["test/sampled/ndcg_10"]["n"] == 1 for r in pop)
