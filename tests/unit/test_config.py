"""Composition, quadrant/method resolution, typed schemas and one-line errors."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from llmrec_cli.config.compose import compose_run, conf_dir
from llmrec_cli.config.validate import catalogue, combinations, validate_all
from llmrec_cli.errors import ConfigError


def test_defaults_compose_to_a_baseline_sasrec_run():
    cfg = compose_run([])
    assert cfg.quadrant.id == "baseline" and cfg.method.name == "baseline" and cfg.crm.name == "sasrec"
    assert cfg.dataset.name == "ml-100k" and cfg.eval.num_negatives == 19 and cfg.seed == 0


def test_top_level_keys_the_checks_rely_on():
    cfg = compose_run(["dataset=synthetic", "crm=bpr", "seed=3", "run_name=x", "eval.max_users=50",
                       "eval.num_negatives=99", "trainer.max_epochs=2", "trainer.device=cpu",
                       "tracking.uri=sqlite:///x.db", "dataset.kcore=3"])
    assert (cfg.seed, cfg.run_name, cfg.eval.max_users, cfg.eval.num_negatives) == (3, "x", 50, 99)
    assert (cfg.trainer.max_epochs, cfg.trainer.device, cfg.tracking.uri) == (2, "cpu", "sqlite:///x.db")
    assert cfg.crm.name == "bpr" and cfg.dataset.kcore == 3


def test_method_alone_sets_its_quadrant_and_quadrant_alone_its_default_method():
    assert compose_run(["method=baseline"]).quadrant.id == "baseline"
    assert compose_run(["quadrant=baseline"]).method.name == "baseline"


def test_hydra_grammar_add_and_delete():
    cfg = compose_run(["+tags.note=ablation"])
    assert cfg.tags.note == "ablation"
    cfg = compose_run(["+tags.note=ablation", "+tags.owner=me", "~tags.note"])
    assert "note" not in cfg.tags and cfg.tags.owner == "me"


@pytest.mark.parametrize("overrides, needle", [
    (["quadrant=7"], "quadrant=7 is not a known option"),
    (["dataset=nope"], "dataset=nope is not a known option"),
    (["no_such_key=1"], "no_such_key"),
    (["seed=abc"], "seed=abc"),
    (["crm.hidden=wide"], "crm.hidden=wide"),
    (["crm=pop", "crm.hidden=3"], "crm.hidden"),
    (["trainer.device=gpu"], "trainer.device=gpu"),
    (["eval.protocols=[sampled,nope]"], "eval.protocols"),
    (["eval.monitor=test/full/ndcg_10"], "valid-split"),
    (["--verbose"], "unknown option"),
])
def test_bad_input_is_one_line_config_error(overrides, needle):
    with pytest.raises(ConfigError) as info:
        compose_run(overrides)
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert info.value.exit_code == 2


def test_quadrant_method_mismatch_is_an_error(tmp_path, monkeypatch):
    # A copy of conf/ with a fake quadrant-3 method proves the check without needing the LLM methods.
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    (conf / "quadrant" / "3.yaml").write_text(
        "# llmrec train quadrant=3\ndefaults:\n  - schema\n  - _self_\n"
        "id: '3'\nllm: frozen\ncrm_at_inference: false\ndefault_method: baseline\n")
    monkeypatch.setenv("LLMREC_CONF_DIR", str(conf))
    with pytest.raises(ConfigError, match="belongs to quadrant baseline"):
        compose_run(["quadrant=3", "method=baseline"])
    with pytest.raises(ConfigError, match="belongs to quadrant baseline"):
        compose_run(["quadrant=3"])  # its default method is a baseline method: still a mismatch


def test_every_yaml_starts_with_the_command_that_uses_it():
    for path in sorted(conf_dir().rglob("*.yaml")):
        lines = path.read_text().splitlines()
        first = lines[1] if lines[0].startswith("# @package") else lines[0]
        assert first.startswith("# llmrec "), f"{path} must start with '# llmrec ...' (the command that uses it)"


def test_validate_composes_every_pair_of_groups_without_errors():
    errors, count = validate_all()
    assert errors == [] and count >= 10


@pytest.mark.slow
def test_validate_all_composes_every_triple_without_errors():
    errors, count = validate_all(full=True)
    assert errors == [] and count > len(combinations())


def test_pairwise_combinations_cover_every_pair_the_full_product_has():
    """Every (method, crm) and (method, model) pair of the full product is composed by the quick validation."""
    def pairs(combos):
        out = set()
        for c in combos:
            if len(c) == 3:
                method, crm, model = c
                out |= {(method, crm), (method, model)}
        return out

    full, quick = combinations(full=True), combinations()
    assert pairs(quick) == pairs(full) and len(quick) < len(full) / 2


def test_catalogue_lists_registered_things():
    cat = catalogue()
    assert {"ml-100k", "ml-1m", "csv", "synthetic", "atomic", "amazon-scientific"} <= {n for n, _ in cat["dataset"]}
    assert {"pop", "bpr", "sasrec"} <= {n for n, _ in cat["crm"]}
    assert all(desc for _, desc in cat["dataset"])


def test_composed_config_round_trips_through_yaml():
    cfg = compose_run(["dataset=synthetic"])
    again = OmegaConf.create(OmegaConf.to_yaml(cfg))
    assert again == cfg
