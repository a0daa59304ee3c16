"""Protocol presets (conf/protocol/): each composes, names its paper and source, and changes exactly the keys it
lists in `protocol.changes`, nothing else, relative to the unified protocol."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from llmrec_cli.config.compose import compose_run, group_options

PRESETS = ("llmrank", "tallrec", "llamarec", "p5")
#: A base run per preset where every changed key applies (llamarec's crm_topk is for LLM rerankers).
BASE = {"llamarec": ["quadrant=3", "model=tiny-llama"], "tallrec": ["method=tallrec", "model=tiny-llama-lora"]}


def flat(node, prefix="") -> dict:
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, path + "."))
        else:
            out[path] = value
    return out


def changed_keys(preset: str) -> tuple[set[str], dict]:
    base = BASE.get(preset, [])
    unified = flat(OmegaConf.to_container(compose_run(base), resolve=True))
    cfg = compose_run([*base, f"protocol={preset}"])
    chosen = flat(OmegaConf.to_container(cfg, resolve=True))
    diff = {k for k in unified.keys() | chosen.keys() if unified.get(k) != chosen.get(k) and not k.startswith("protocol.")}
    return diff, OmegaConf.to_container(cfg.protocol)


def test_every_preset_is_tested_and_the_default_is_unified():
    assert set(group_options("protocol")) == {"unified", *PRESETS}
    cfg = compose_run([])
    assert cfg.protocol.name == "unified" and list(cfg.protocol.changes) == []


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_changes_only_what_it_says(preset):
    diff, protocol = changed_keys(preset)
    assert protocol["name"] == preset and protocol["paper"] and protocol["source"] and protocol["differences"]
    assert diff == set(protocol["changes"]), f"protocol={preset} changes {sorted(diff)}, says {protocol['changes']}"


def test_what_each_preset_sets():
    assert compose_run(["protocol=llmrank"]).eval.max_users == 200
    p5 = compose_run(["protocol=p5", "dataset=amazon-beauty"])
    assert list(p5.eval.protocols) == ["full"] and list(p5.eval.ks) == [5, 10] and p5.dataset.split == "loo"
    llama = compose_run(["protocol=llamarec", "quadrant=3", "model=tiny-llama"])
    assert llama.candidates.source == "crm_topk" and llama.candidates.k == 20 and 50 in llama.eval.ks
    tall = compose_run(["protocol=tallrec"])
    assert tall.dataset.split == "temporal" and list(tall.eval.protocols) == ["like", "pointwise"]


def test_llamarec_for_a_crm_alone_is_the_retriever_ranking_everything():
    cfg = compose_run(["protocol=llamarec", "quadrant=baseline", "crm=sasrec"])
    assert cfg.candidates.source == "sampled" and list(cfg.eval.ks) == [1, 5, 10, 20, 50]


def test_a_preset_is_overridable_on_the_command_line():
    assert compose_run(["protocol=llmrank", "eval.max_users=50"]).eval.max_users == 50
