"""`llmrec sweep`: parent/child runs, parallel joblib children, a failing job, the SLURM dry run."""
from __future__ import annotations

import mlflow
import pytest

from llmrec_cli.pipelines.sweep import _quote_groups, expand
from tests.integration.test_cli import llmrec


def test_expand_is_the_cartesian_product_and_quotes_numeric_quadrants():
    jobs = expand(["quadrant=1,2", "seed=0,1,2", "dataset=synthetic"])
    assert len(jobs) == 6 and jobs[0] == ["quadrant='1'", "seed=0", "dataset=synthetic"]
    assert _quote_groups("quadrant=1,2,baseline") == "quadrant='1','2','baseline'"
    assert _quote_groups("seed=0,1") == "seed=0,1"


def test_joblib_sweep_nests_children_under_one_parent_and_reports_failures(work):
    path, uri = work
    p = llmrec("sweep", "-m", "quadrant=baseline", "crm=pop,bpr", "seed=0,1", "dataset=synthetic",
               "trainer.max_epochs=1", "launcher=joblib", f"tracking.uri={uri}", cwd=path)
    assert "4 jobs: 4 ok, 0 failed" in p.stdout and "database is locked" not in (p.stdout + p.stderr).lower()
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    kids = runs[runs["tags.mlflow.parentRunId"].notna()]
    parents = runs[runs["tags.sweep"] == "true"]
    assert len(kids) == 4 and set(kids["status"]) == {"FINISHED"}
    assert len(parents) == 1 and set(kids["tags.mlflow.parentRunId"]) == {parents.run_id.iloc[0]}
    assert parents.status.iloc[0] == "FINISHED" and parents["metrics.sweep/jobs"].iloc[0] == 4
    assert sorted(kids["tags.sweep_job"]) == ["0", "1", "2", "3"]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents.run_id.iloc[0], "compare")}
    assert {"compare/compare.md", "compare/quadrant_map.png", "compare/pareto.png"} <= arts

    p = llmrec("sweep", "-m", "crm=pop", "dataset=synthetic,csv", "launcher=local", "run_name=failing",
               cwd=path, check=False)
    assert p.returncode == 1
    assert "FAILED" in p.stdout and "dataset=csv needs dataset.path" in p.stdout and "1 failed" in p.stdout
    runs = mlflow.search_runs(search_all_experiments=True)
    failing_parent = runs[runs["tags.mlflow.runName"] == "sweep-failing"]
    assert failing_parent.status.iloc[0] == "FAILED"
    kids = runs[runs["tags.mlflow.parentRunId"] == failing_parent.run_id.iloc[0]]
    # the csv job failed its up-front checks (no dataset.path): reported in the table, no MLflow run
    assert sorted(zip(kids["tags.dataset"], kids["status"], strict=True)) == [("synthetic", "FINISHED")]


@pytest.mark.parametrize("launcher", ["slurm", "joblib", "local"])
def test_dry_run_composes_every_job_and_the_launcher(work, launcher):
    path, _ = work
    p = llmrec("sweep", "--dry-run", "-m", "quadrant=baseline", "crm=pop,sasrec", "seed=0,1,2",
               f"launcher={launcher}", "hydra.launcher.partition=gpu" if launcher == "slurm" else "seed=0,1,2",
               cwd=path)
    assert "0 with config errors" in p.stdout
    if launcher == "slurm":
        assert "'partition': 'gpu'" in p.stdout and "'array_parallelism': 16" in p.stdout
        assert "SlurmLauncher" in p.stdout and "6 jobs" in p.stdout
    p = llmrec("sweep", "--dry-run", "-m", "crm=pop,nope", cwd=path, check=False)
    assert p.returncode == 2 and "crm=nope is not a known option" in p.stderr


def test_four_quadrants_preset_declares_one_job_per_arm(work):
    path, _ = work
    jobs = expand(["experiment=four-quadrants", "seed=0,1"])
    arms = [j[0] for j in jobs[::2]]
    # the SASRec arm comes before every arm that reuses it (crm.from_run=auto), each seed's jobs in turn
    assert arms == ["arm=pop", "arm=bpr", "arm=sasrec", "arm=q2-llm-encoder", "arm=q1-collm", "arm=q4-listwise-lora",
                    "arm=q3-zero-shot", "arm=q3-embed-minilm", "arm=q3-embed-smollm2"] and len(jobs) == 18
    p = llmrec("sweep", "--dry-run", "experiment=four-quadrants", cwd=path)
    assert "9 jobs, 0 with config errors" in p.stdout


def test_a_preset_sweep_runs_the_arms_given_on_the_command_line(work):
    """The user's `arm=` replaces the preset's axis (once, not on top of it); quadrants are tagged per arm."""
    path, uri = work
    p = llmrec("sweep", "experiment=four-quadrants", "arm=pop,bpr", "dataset=synthetic", "trainer.max_epochs=1",
               f"tracking.uri={uri}", cwd=path)
    assert "2 jobs: 2 ok, 0 failed" in p.stdout
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True)
    kids = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert sorted(kids["tags.crm"]) == ["bpr", "pop"] and set(kids["tags.quadrant"]) == {"baseline"}
    assert kids["tags.candidate_set_hash"].nunique() == 1
