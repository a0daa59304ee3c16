"""Backbone loading on the in-code tiny Llama: frozen load, LoRA wrapping, random init, local folders, errors."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from llmrec_cli.config.compose import compose_run, group_options
from llmrec_cli.config.schema import LoraConfig, ModelConfig
from llmrec_cli.errors import ConfigError, LlmrecError
from llmrec_cli.llm.loading import (
    apply_lora,
    count_parameters,
    describe,
    load_backbone,
    load_model,
    resolve_dtype,
)
from llmrec_cli.llm.tiny import tiny_llama

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def model_cfg(**kw):
    return OmegaConf.structured(ModelConfig(**kw))


def lora_size(model) -> int:
    """Expected LoRA parameters: r * (in + out) for every targeted Linear."""
    return sum(8 * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in LLAMA_PROJECTIONS)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A tiny Llama saved with save_pretrained (model + tokenizer): a local model folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model, tok = tiny_llama()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model


def test_tiny_loads_frozen_with_pad_token():
    loaded = load_backbone(compose_run(["model=tiny-llama", "crm=pop"]).model, "cpu")
    assert loaded.kind == "causal" and loaded.name == "tiny-llama" and loaded.source.startswith("tiny")
    assert loaded.tokenizer.pad_token is not None and loaded.model.config.pad_token_id is not None
    assert not loaded.model.training and loaded.model.config.use_cache
    assert all(not p.requires_grad for p in loaded.model.parameters())
    assert loaded.num_parameters == sum(p.numel() for p in loaded.model.parameters()) > 0
    assert loaded.num_trainable == 0 and loaded.dtype == "float32"
    info = describe(loaded)
    assert {"backbone", "source", "num_parameters", "num_trainable", "dtype"} <= set(info)


def test_pad_token_falls_back_to_eos(monkeypatch):
    import llmrec_cli.llm.tiny as tiny

    model, tok = tiny_llama()
    tok = tok.__class__(tokenizer_object=tok.backend_tokenizer, bos_token="<s>", eos_token="</s>")
    assert tok.pad_token is None
    monkeypatch.setattr(tiny, "tiny_llama", lambda seed=0: (model, tok))
    loaded = load_backbone(model_cfg(name="t", tiny=True), "cpu")
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "</s>"


def test_lora_wraps_the_seven_projections_and_trains_only_adapters():
    cfg = compose_run(["model=tiny-llama-lora", "crm=pop"]).model
    base = load_backbone(cfg, "cpu")
    expected = lora_size(base.model)
    loaded = load_model(cfg, "cpu")
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    from peft.tuners.lora import LoraLayer

    wrapped = [n for n, m in loaded.model.named_modules() if isinstance(m, LoraLayer)]
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == set(LLAMA_PROJECTIONS)
    assert len(wrapped) == 7 * loaded.model.config.num_hidden_layers
    assert loaded.num_trainable == expected == 8192
    assert loaded.num_parameters == base.num_parameters + expected
    assert (loaded.num_parameters, loaded.num_trainable) == count_parameters(loaded.model)


def test_lora_gradients_reach_the_adapters_with_checkpointing():
    cfg = model_cfg(name="t", tiny=True, gradient_checkpointing=True,
                    peft=LoraConfig(target_modules=LLAMA_PROJECTIONS))
    loaded = load_model(cfg, "cpu")
    assert loaded.model.config.use_cache is False
    loaded.model.train()
    ids = loaded.tokenizer(["Answer: Yes", "Answer: No"], return_tensors="pt", padding=True)
    out = loaded.model(**ids, labels=ids["input_ids"])
    out.loss.backward()
    grads = [p.grad for n, p in loaded.model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_unknown_target_module_names_the_key():
    loaded = load_backbone(model_cfg(name="t", tiny=True), "cpu")
    with pytest.raises(ConfigError, match="model.peft.target_modules: c_attn"):
        apply_lora(loaded, LoraConfig(target_modules=["q_proj", "c_attn"]))
    with pytest.raises(ConfigError, match="target_modules is empty"):
        apply_lora(loaded, LoraConfig())


def test_random_weights_from_a_local_config_folder(saved_tiny):
    folder, reference = saved_tiny
    loaded = load_backbone(model_cfg(name="rand", name_or_path=str(folder), weights="random"), "cpu")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.source.startswith("random init") and loaded.num_parameters == count_parameters(reference)[0]
    ref = dict(reference.named_parameters())
    assert any(not torch.equal(p, ref[n]) for n, p in loaded.model.named_parameters())
    enc = load_backbone(model_cfg(name="rand", name_or_path=str(folder), weights="random", kind="encoder"), "cpu")
    assert type(enc.model).__name__ == "LlamaModel"


def test_pretrained_from_a_local_folder_gives_the_saved_logits(saved_tiny):
    folder, reference = saved_tiny
    loaded = load_backbone(model_cfg(name="local", name_or_path=str(folder)), "cpu")
    assert loaded.source == f"local:{folder}"
    ids = loaded.tokenizer("Will the user like the movie? Answer:", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded.model(**ids).logits, reference(**ids).logits, atol=1e-6)


def test_bfloat16_is_applied():
    loaded = load_backbone(model_cfg(name="t", tiny=True, dtype="bfloat16"), "cpu")
    assert loaded.dtype == "bfloat16" and next(loaded.model.parameters()).dtype == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda:0") == torch.bfloat16


def test_missing_hub_model_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LlmrecError) as err:
        load_backbone(model_cfg(name="ghost", name_or_path="llmrec-test/no-such-model-xyz"), "cpu")
    msg = str(err.value)
    assert "\n" not in msg and "model.name_or_path=llmrec-test/no-such-model-xyz" in msg
    assert "local folder" in msg


def test_missing_local_folder_and_uninstalled_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LlmrecError, match="no such folder"):
        load_backbone(model_cfg(name="x", name_or_path=str(tmp_path / "nope")), "cpu")
    with pytest.raises(LlmrecError, match="model.package_dir=no_such_pkg_xyz/model"):
        load_backbone(model_cfg(name="x", package_dir="no_such_pkg_xyz/model"), "cpu")
    with pytest.raises(LlmrecError, match="model.gguf_file=x.gguf"):
        load_backbone(model_cfg(name="x", gguf_package="no_such_pkg_xyz", gguf_file="x.gguf"), "cpu")
    # a missing package falls back to name_or_path (here a missing hub id: the error names name_or_path)
    with pytest.raises(LlmrecError, match="model.name_or_path=org/fallback"):
        load_backbone(model_cfg(name="x", gguf_package="no_such_pkg_xyz", gguf_file="x.gguf",
                                name_or_path="org/fallback"), "cpu")


def test_bad_choices_and_none_are_config_errors():
    with pytest.raises(ConfigError, match="model=none"):
        load_backbone(compose_run(["crm=pop"]).model, "cpu")
    with pytest.raises(ConfigError, match="model.dtype=float8"):
        load_backbone(model_cfg(name="t", tiny=True, dtype="float8"), "cpu")
    with pytest.raises(ConfigError, match="names no weights"):
        load_backbone(model_cfg(name="t"), "cpu")


def test_every_model_yaml_composes_with_explicit_lora_targets():
    names = group_options("model")
    assert {"none", "tiny-llama", "tiny-llama-lora", "smollm2", "smollm2-lora", "llama-lora", "qwen-lora",
            "minilm"} <= set(names)
    for name in names:
        cfg = compose_run([f"model={name}", "crm=pop"]).model
        assert cfg.name == name
        if name.endswith("-lora"):
            assert list(cfg.peft.target_modules) == LLAMA_PROJECTIONS
        else:
            assert cfg.peft is None
    assert compose_run(["model=minilm", "crm=pop"]).model.kind == "encoder"
