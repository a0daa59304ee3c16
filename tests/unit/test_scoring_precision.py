"""Scorer numerics and prompt encoding: fp32 LM head (no ties made by bf16 rounding), pointwise log-odds,
a single BOS for chat-templated prompts, and counted (BOS-keeping) truncation."""
from __future__ import annotations

import copy
import logging
import random

import numpy as np
import pytest
import torch

from llmrec_cli.llm.scoring import Scorer
from llmrec_cli.llm.tiny import sharpen, tiny_bos_tokenizer, tiny_llama

LETTERS = [chr(c) for c in range(ord("A"), ord("A") + 20)]
WORDS = ("Toy Story GoldenEye Four Rooms Get Shorty Copycat Star Wars Fargo Contact Titanic Scream Air Force One "
         "Quantum Widget Gadget Nebula Harbor Crystal Garden Echo River Stone Falcon Orbit Lantern Meadow").split()
USERS = 48
POINT_CANDS = 8


def _crowd(model, tok, noise: float = 0.05, seed: int = 2):
    """Give the answer tokens (20 letters, Yes, No) nearly equal head rows, as in a real LLM where the answer
    tokens' logits are large and close together: their logits share a large offset and differ by little, which
    is where rounding the logits to bf16 ties them."""
    rows = Scorer(model, tok, "cpu").verbalizer_ids(LETTERS + ["Yes", "No"])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        common = torch.randn(weight.shape[1], generator=gen)
        weight[rows] = common + noise * torch.randn(len(rows), weight.shape[1], generator=gen)
    return model


def _workload(seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """(listwise prompts, pointwise prompts per user): the target is candidate 0 of each user."""
    rng = random.Random(seed)
    titles = [" ".join(rng.sample(WORDS, 2)) for _ in range(60)]
    listwise, pointwise = [], []
    for _ in range(USERS):
        history = ", ".join(rng.sample(titles, 5))
        cands = rng.sample(titles, len(LETTERS))
        listing = " ".join(f"{label}. {title}" for label, title in zip(LETTERS, cands, strict=True))
        listwise.append(f"The user watched: {history}. Candidates: {listing}. Answer:")
        pointwise.append([f"The user watched: {history}. Will the user like the movie {c}? Answer:"
                          for c in cands[:POINT_CANDS]])
    return listwise, pointwise


def _ties(scores: np.ndarray) -> int:
    """Negatives (columns 1..) scored exactly like their row's target (column 0)."""
    return int((scores[:, 1:] == scores[:, :1]).sum())


@pytest.fixture(scope="module")
def crowded():
    model, tok = tiny_llama()
    model = _crowd(sharpen(model), tok)
    return model, copy.deepcopy(model).to(torch.bfloat16), tok


def test_bf16_scores_have_no_more_ties_than_fp32(crowded):
    fp32, bf16, tok = crowded
    listwise, pointwise = _workload()
    flat = [p for user in pointwise for p in user]
    scores = {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        scorer = Scorer(model, tok, "cpu", batch_size=16)
        lists = np.stack(scorer.listwise(listwise, [len(LETTERS)] * USERS, labels=LETTERS))
        points = scorer.pointwise(flat).reshape(USERS, POINT_CANDS)
        scores[name] = lists, points
    # The setup is one where bf16 rounding of the logits ties answers: the model's own bf16 head does.
    ids = Scorer(bf16, tok, "cpu").verbalizer_ids(LETTERS)
    with torch.no_grad():
        rounded = np.stack([bf16(torch.tensor([tok(p)["input_ids"]])).logits[0, -1, ids].float().numpy()
                            for p in listwise])
    assert _ties(rounded) > 0
    for kind in (0, 1):
        assert _ties(scores["bf16"][kind]) <= _ties(scores["fp32"][kind]), ("listwise", "pointwise")[kind]
        # bf16 only perturbs the hidden states: scores stay within a bf16 tolerance of the fp32 ones.
        np.testing.assert_allclose(scores["bf16"][kind], scores["fp32"][kind], atol=0.1, rtol=0.02)


def _naive_yes_no(model, tok, prompt, yes: int, no: int) -> torch.Tensor:
    """fp32 logits of (yes, no) at the last position of a full forward."""
    with torch.no_grad():
        return model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1, [yes, no]].float()


def test_pointwise_returns_log_odds(crowded):
    fp32, _, tok = crowded
    prompts = [p for user in _workload()[1][:4] for p in user]
    scorer = Scorer(fp32, tok, "cpu", batch_size=5)
    got = scorer.pointwise(prompts)
    assert got.dtype == np.float64 and got.shape == (len(prompts),)
    yes, no = scorer.verbalizer_ids(["Yes", "No"])
    naive = [_naive_yes_no(fp32, tok, p, yes, no) for p in prompts]
    np.testing.assert_allclose(1 / (1 + np.exp(-got)), [torch.softmax(x, -1)[0].item() for x in naive], atol=1e-6)
    np.testing.assert_allclose(got, [(x[0] - x[1]).item() for x in naive], atol=1e-4)


def test_pointwise_log_odds_do_not_saturate():
    model, tok = tiny_llama()
    model = sharpen(model)
    with torch.no_grad():
        model.model.norm.weight.mul_(40.0)  # logits x40: log-odds in the tens to hundreds
    prompts = [p for user in _workload()[1][:3] for p in user]
    scorer = Scorer(model, tok, "cpu", batch_size=4)
    yes, no = scorer.verbalizer_ids(["No", "Yes"])  # this model says "No" much more than "Yes": odds >> 1
    naive = np.array([(lambda x: (x[0] - x[1]).item())(_naive_yes_no(model, tok, p, yes, no)) for p in prompts])
    # As probabilities (sigmoid of the log-odds) in float64, distinct scores saturate to the same 1.0.
    assert len(np.unique(1 / (1 + np.exp(-naive)))) < len(np.unique(naive))
    got = scorer.pointwise(prompts, yes="No", no="Yes")
    np.testing.assert_allclose(got, naive, rtol=1e-4)
    assert len(np.unique(got)) == len(np.unique(naive))


def _fp32_head_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Log-softmax at the last position with the body in the model's dtype and the head in fp32."""
    with torch.no_grad():
        t = torch.tensor([ids])
        hidden = model.model(input_ids=t, attention_mask=torch.ones_like(t),
                             position_ids=torch.arange(len(ids))[None]).last_hidden_state[0, -1]
        weight = model.get_output_embeddings().weight
        return (hidden.float() @ weight.float().T).log_softmax(-1)


def test_likelihood_uses_an_fp32_head_in_bf16(crowded):
    _, bf16, tok = crowded
    prompt = _workload()[1][0][0]
    words = [" Yes", " No", " A", " B", " Story", " Fargo"]
    scorer = Scorer(bf16, tok, "cpu", batch_size=1)
    got = scorer.likelihood([prompt], [words])[0]
    ref = _fp32_head_logprobs(bf16, tok(prompt)["input_ids"])
    cand = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    assert all(len(c) == 1 for c in cand)
    np.testing.assert_allclose(got, [ref[c[0]].item() for c in cand], atol=1e-4)
    # The fp32 copy of the bf16 head is re-made when the weight changes in place.
    with torch.no_grad():
        bf16.get_output_embeddings().weight[cand[0][0]] += 1.0
    try:
        again = scorer.likelihood([prompt], [words])[0]
        ref = _fp32_head_logprobs(bf16, tok(prompt)["input_ids"])
        np.testing.assert_allclose(again, [ref[c[0]].item() for c in cand], atol=1e-4)
        assert again[0] > got[0] + 0.1
    finally:
        with torch.no_grad():
            bf16.get_output_embeddings().weight[cand[0][0]] -= 1.0


def test_lora_on_the_lm_head_falls_back_to_the_module():
    from peft import LoraConfig, get_peft_model

    base, tok = tiny_llama(seed=4)
    base.config.tie_word_embeddings = False
    base.lm_head.weight = torch.nn.Parameter(base.lm_head.weight.detach().clone())
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.eval()
    scorer = Scorer(peft_model, tok, "cpu", batch_size=2)
    prompts = _workload()[1][0][:3]
    yes, no = scorer.verbalizer_ids(["Yes", "No"])
    naive = [(lambda x: (x[0] - x[1]).item())(_naive_yes_no(peft_model, tok, p, yes, no)) for p in prompts]
    np.testing.assert_allclose(scorer.pointwise(prompts), naive, atol=1e-4)


# ---------------------------------------------------------------------- BOS and truncation


@pytest.fixture(scope="module")
def bos_model():
    model, _ = tiny_llama()
    return sharpen(model), tiny_bos_tokenizer()


def _chat(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def test_chat_prompts_get_one_bos(bos_model):
    from llmrec_cli.llm.tokens import encode_prompts

    model, tok = bos_model
    bos = tok.bos_token_id
    chat, plain = _chat(tok, "Will the user like Fargo? Answer:"), "Will the user like Fargo? Answer:"
    assert chat.startswith(tok.bos_token)
    encoded = encode_prompts(tok, [chat, plain, chat])
    for ids in encoded:
        assert ids[0] == bos and ids[1] != bos
    assert encoded[0] == encoded[2] == tok(chat, add_special_tokens=False)["input_ids"]
    assert encoded[1] == tok(plain)["input_ids"]
    assert encode_prompts(tok, [chat], special=False) == [tok(chat, add_special_tokens=False)["input_ids"]]
    assert encode_prompts(tok, [tok.bos_token * 2 + plain]) == [tok(plain)["input_ids"]]
    # The Scorer encodes text prompts the same way: one BOS, so it scores like the ids with one BOS.
    scorer = Scorer(model, tok, "cpu", batch_size=2)
    got = scorer.pointwise([chat, plain])
    assert scorer.stats["tokens"] == len(encoded[0]) + len(encoded[1])
    np.testing.assert_array_equal(got, scorer.pointwise(encoded[:2]))


def test_truncation_keeps_the_bos_and_is_counted(bos_model, caplog):
    model, tok = bos_model
    long = "The user watched these movies in order, most recent last: Toy Story, Fargo, Contact. Answer:"
    short = "Answer:"
    ids = tok(long)["input_ids"]
    width = 12
    assert len(ids) > width and ids[0] == tok.bos_token_id
    scorer = Scorer(model, tok, "cpu", batch_size=2, max_length=width)
    wide = Scorer(model, tok, "cpu", batch_size=2)
    with caplog.at_level(logging.WARNING, logger="llmrec_cli.llm.scoring"):
        got = scorer.pointwise([long, short])
        again = scorer.listwise([long], [3])
    kept = [tok.bos_token_id] + ids[-(width - 1):]
    np.testing.assert_array_equal(got, wide.pointwise([kept, short]))
    np.testing.assert_array_equal(again[0], wide.listwise([kept], [3])[0])
    assert scorer.stats["truncated_prompts"] == 2
    assert scorer.stats["truncated_tokens"] == 2 * (len(ids) - width)
    assert wide.stats["truncated_prompts"] == 0 and wide.stats["truncated_tokens"] == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "max_length" in r.getMessage()]
    assert len(warnings) == 1 and str(len(ids) - width) in warnings[0].getMessage()
    # Without a BOS (the default tiny tokenizer) the last max_length tokens are kept, as before.
    _, plain_tok = tiny_llama()
    plain = Scorer(model, plain_tok, "cpu", max_length=width)
    plain_ids = plain_tok(long)["input_ids"]
    np.testing.assert_array_equal(plain.pointwise([long]), plain.pointwise([plain_ids[-width:]]))
    assert plain.stats["truncated_tokens"] == len(plain_ids) - width
