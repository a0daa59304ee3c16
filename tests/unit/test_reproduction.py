"""docs/reproduction.md from runs: the right runs per published entry, one per seed, never across protocols."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from llmrec_cli.errors import LlmrecError
from llmrec_cli.report import reproduction as rep


def run(seed, value, *, crm="sasrec", loss="bce", preset="p5", dataset="amazon-beauty", protocol="P1", config="C1",
        status="FINISHED", start=0, source_run=""):
    return {"status": status, "start_time": pd.Timestamp(1_800_000_000 + start, unit="s"), "tags.seed": str(seed),
            "tags.crm": crm, "tags.crm_loss": loss, "tags.protocol_preset": preset, "tags.dataset": dataset,
            "tags.quadrant": "baseline", "tags.method": "baseline", "tags.protocol_hash": protocol,
            "tags.crm_config_hash": config, "tags.source_run": source_run, "metrics.test/full/ndcg_10": value,
            "metrics.test/full/hr_10": value * 2, "metrics.test/sampled/ndcg_10": value * 5,
            "metrics.fit/best_epoch": 10.0, "params.trainer.max_epochs": "20"}


def entry(**match):
    return rep.Entry(paper="P", source="S", model="M", match=match or {"protocol_preset": "p5", "crm": "sasrec",
                                                                        "crm_loss": "bce"},
                     metrics={"full/ndcg_10": 0.03})


def test_the_published_file_parses_and_every_entry_names_a_source():
    entries = rep.load_published()
    assert len(entries) >= 8 and all(e.source and e.paper and e.metrics for e in entries)
    beauty = [e for e in entries if e.match.get("dataset") == "amazon-beauty"]
    assert {e.match["crm"] for e in beauty} == {"pop", "bpr", "sasrec", "gru4rec", "bert4rec", "lightgcn"}


def test_runs_are_matched_by_tags_and_counted_once_per_seed():
    df = pd.DataFrame([run(0, 0.01, start=1), run(0, 0.02, start=2), run(1, 0.04), run(2, 0.06),
                       run(2, 0.5, loss="ce"), run(2, 0.5, preset="unified"), run(1, 0.5, status="FAILED"),
                       run(1, 0.5, source_run="abc")])
    [e] = rep.gather(df, [entry()])
    assert sorted(e.runs["metrics.test/full/ndcg_10"]) == pytest.approx([0.02, 0.04, 0.06])  # newest of seed 0
    text = rep.render([e], None, "sqlite:///x.db", [])
    assert "0.0400 ± " in text and "(3)" in text and "| 0,1,2 |" in text and "+0.0100 (+33%)" in text


def test_runs_of_another_protocol_or_crm_config_are_set_aside_not_averaged():
    df = pd.DataFrame([run(0, 0.01), run(1, 0.02), run(2, 0.03), run(0, 0.9, protocol="P2"),
                       run(0, 0.9, config="C2", start=5)])
    [e] = rep.gather(df, [entry()])
    assert e.runs["metrics.test/full/ndcg_10"].max() < 0.1 and len(e.runs) == 3
    assert len(e.set_aside) == 2
    assert "set aside" in rep.render([e], None, "u", [])


def test_an_entry_without_runs_says_not_run_and_the_loss_tag_defaults_to_ce():
    [e] = rep.gather(pd.DataFrame([run(0, 0.05, loss="")]), [entry(crm="sasrec", crm_loss="bce")])
    assert len(e.runs) == 0 and "not run" in rep.render([e], None, "u", [])
    [e] = rep.gather(pd.DataFrame([run(0, 0.05, loss="")]), [entry(crm="sasrec", crm_loss="ce")])
    assert len(e.runs) == 1


def test_the_unified_table_lists_baselines_in_model_order():
    df = pd.DataFrame([run(0, 0.05, crm="sasrec", loss="", preset="unified", dataset="ml-100k"),
                       run(0, 0.01, crm="pop", loss="", preset="unified", dataset="ml-100k"),
                       run(0, 0.02, crm="bpr", loss="", preset="p5", dataset="ml-100k")])
    table = rep.unified_baselines(df, ["ml-100k"])
    assert table["model"].tolist() == ["Pop", "SASRec"]
    text = rep.render([], table, "u", ["ml-100k"])
    assert "| ml-100k | Pop | 0.0100 (1) | 0.0200 (1) |" in text


def test_a_bad_published_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("- paper: x\n  model: y\n")
    with pytest.raises(LlmrecError, match="entry 1 lacks source, match, metrics"):
        rep.load_published(bad)
    bad.write_text("- {paper: x, source: s, model: y, match: {colour: red}, metrics: {}}\n")
    with pytest.raises(LlmrecError, match="unknown tags"):
        rep.load_published(bad)
    assert math.isnan(rep._cell([])[1])
