"""The batched scoring engine: batched == unbatched, equal to naive full-forward references, peft, verbalizers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from llmrec_cli.llm.scoring import Scorer
from llmrec_cli.llm.tiny import sharpen, tiny_llama

PROMPTS = [
    "The user watched these movies in order, most recent last: Toy Story, Fargo. Will the user like "
    "the movie? Answer:",
    "Yes",
    "Title year genres Action Adventure Animation Comedy Crime Documentary Drama. Which candidate will the "
    "user pick next? Candidates: 1 Scream 2 Titanic 3 Contact 4 Star Wars 5 Copycat. Reply with a number. Answer:",
    "Quantum Widget Gadget Nebula Harbor:",
]
CANDIDATES = [
    [" Toy Story", " Fargo Contact Titanic", " Yes"],
    [" No", " Star Wars", " a", " Quantum Widget Gadget Nebula", " 7"],
    [" Scream"],
    [" Air Force One", " Get Shorty"],
]
COUNTS = [3, 5, 2, 4]




@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_llama()
    return sharpen(model), tok


@pytest.fixture(scope="module")
def scorer(tiny):
    model, tok = tiny
    return Scorer(model, tok, "cpu", batch_size=3, candidate_batch_size=4)


def _full_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def _last_logits(model, tok, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].float()


def _log_odds(logits: torch.Tensor, yes: int, no: int) -> float:
    """What ``Scorer.pointwise`` returns: logit(yes) - logit(no), whose sigmoid is P(yes) / (P(yes) + P(no))."""
    return (logits[yes] - logits[no]).item()


def test_verbalizer_ids_come_from_the_tokenizer(scorer, tiny):
    _, tok = tiny
    words = ["Yes", "No", "1", "2", "10"]
    ids = scorer.verbalizer_ids(words)
    assert ids == [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
    assert len(set(ids)) == len(ids)
    assert scorer.verbalizer_ids([" " + w for w in words]) == ids  # a leading space is not doubled
    bare = ["Yes", "No", "1", "2"]  # without the space, "1" and "10" start alike in the tiny tokenizer
    assert scorer.verbalizer_ids(bare, prefix="") == [tok(w, add_special_tokens=False)["input_ids"][0] for w in bare]
    with pytest.raises(ValueError, match="share their first token"):
        scorer.verbalizer_ids(["Yes", "Yes"])
    # Two different words whose first tokens coincide (multi-token words starting alike).
    first = tok(" Quantumzzz", add_special_tokens=False)["input_ids"][0]
    assert tok(" Quantumyyy", add_special_tokens=False)["input_ids"][0] == first
    with pytest.raises(ValueError):
        scorer.verbalizer_ids(["Quantumzzz", "Quantumyyy"])


def test_pointwise_batched_equals_unbatched_and_naive(scorer, tiny):
    model, tok = tiny
    batched = scorer.pointwise(PROMPTS)
    assert batched.dtype == np.float64 and batched.shape == (len(PROMPTS),)
    single = np.array([scorer.pointwise([p])[0] for p in PROMPTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    yes, no = scorer.verbalizer_ids(["Yes", "No"])
    naive = np.array([_log_odds(_last_logits(model, tok, p), yes, no) for p in PROMPTS])
    np.testing.assert_allclose(batched, naive, atol=1e-4)
    assert np.ptp(batched) > 1e-3  # the sharpened model discriminates between prompts


HISTORY = ("The user watched these movies in order, most recent last: Toy Story, GoldenEye, Four Rooms, "
           "Get Shorty, Copycat, Star Wars, Fargo, Contact, Titanic, Scream, Air Force One.")
SHARED = [f"{HISTORY} Will the user like the movie {t}? Answer:" for t in
          ["Toy Story", "Fargo", "Quantum Widget", "Star Wars", "a", "Crystal Garden Echo River"]]


def test_pointwise_and_listwise_share_long_prefixes(tiny):
    model, tok = tiny
    prompts = SHARED + PROMPTS + SHARED[:2]  # groups of 8 (with duplicates) among unrelated prompts
    shared = Scorer(model, tok, "cpu", batch_size=3, candidate_batch_size=4, share_prefix=16)
    plain = Scorer(model, tok, "cpu", batch_size=3, share_prefix=0)
    got = shared.pointwise(prompts)
    np.testing.assert_allclose(got, plain.pointwise(prompts), atol=1e-5)
    # The history was encoded once per group (of at most 4 prompts): far fewer tokens than prompt by prompt.
    assert shared.stats["tokens"] < 0.7 * plain.stats["tokens"]
    np.testing.assert_allclose(got, [plain.pointwise([p])[0] for p in prompts], atol=1e-5)
    yes, no = shared.verbalizer_ids(["Yes", "No"])
    naive = [_log_odds(_last_logits(model, tok, p), yes, no) for p in prompts]
    np.testing.assert_allclose(got, naive, atol=1e-4)
    counts = [3] * len(prompts)
    for a, b in zip(shared.listwise(prompts, counts), plain.listwise(prompts, counts), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_likelihood_batched_equals_unbatched_and_naive(scorer, tiny):
    model, tok = tiny
    batched = scorer.likelihood(PROMPTS, CANDIDATES)
    assert [len(b) for b in batched] == [len(c) for c in CANDIDATES]
    assert all(b.dtype == np.float64 for b in batched)
    for prompt, cands, got in zip(PROMPTS, CANDIDATES, batched, strict=True):
        single = scorer.likelihood([prompt], [cands])[0]
        np.testing.assert_allclose(got, single, atol=1e-5)
        one_by_one = np.array([scorer.likelihood([prompt], [[c]])[0][0] for c in cands])
        np.testing.assert_allclose(got, one_by_one, atol=1e-5)
        p_ids = tok(prompt)["input_ids"]
        for cand, score in zip(cands, got, strict=True):
            c_ids = tok(cand, add_special_tokens=False)["input_ids"]
            logp = _full_logprobs(model, p_ids + c_ids)
            ref = sum(logp[len(p_ids) - 1 + k, t].item() for k, t in enumerate(c_ids)) / len(c_ids)
            assert abs(score - ref) < 1e-4, (prompt, cand, score, ref)


def test_eager_attention_gives_the_same_scores(scorer, tiny):
    model, tok = tiny
    eager = sharpen(tiny_llama()[0])
    eager.set_attn_implementation("eager")
    other = Scorer(eager, tok, "cpu", batch_size=3, candidate_batch_size=4, share_prefix=16)
    np.testing.assert_allclose(other.pointwise(PROMPTS + SHARED), scorer.pointwise(PROMPTS + SHARED), atol=1e-5)
    for a, b in zip(other.likelihood(PROMPTS, CANDIDATES), scorer.likelihood(PROMPTS, CANDIDATES), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_likelihood_chunks_candidates_of_one_prompt(tiny):
    model, tok = tiny
    many = [" Toy Story", " Fargo", " Star Wars", " Contact", " Titanic", " Scream", " a b c", " Yes"]
    small = Scorer(model, tok, "cpu", batch_size=2, candidate_batch_size=3).likelihood(PROMPTS[:2], [many, many])
    big = Scorer(model, tok, "cpu", batch_size=8, candidate_batch_size=64).likelihood(PROMPTS[:2], [many, many])
    for a, b in zip(small, big, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_likelihood_rejects_empty_candidates(scorer):
    with pytest.raises(ValueError, match="no token"):
        scorer.likelihood(["Answer:"], [[""]])
    assert [len(x) for x in scorer.likelihood(["Answer:", "Yes"], [[], [" No"]])] == [0, 1]


def test_listwise_batched_equals_unbatched_and_naive(scorer, tiny):
    model, tok = tiny
    batched = scorer.listwise(PROMPTS, COUNTS)
    assert [len(b) for b in batched] == COUNTS
    for prompt, count, got in zip(PROMPTS, COUNTS, batched, strict=True):
        np.testing.assert_allclose(got, scorer.listwise([prompt], [count])[0], atol=1e-5)
        ids = scorer.verbalizer_ids([str(i) for i in range(1, count + 1)])
        ref = _last_logits(model, tok, prompt)[ids].log_softmax(-1).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5)
        assert abs(np.exp(got).sum() - 1) < 1e-9
    bare = scorer.listwise(PROMPTS[:1], [3], labels=["A", "B", "C"], prefix="")[0]
    ids = scorer.verbalizer_ids(["A", "B", "C"], prefix="")
    np.testing.assert_allclose(bare, _last_logits(model, tok, PROMPTS[0])[ids].log_softmax(-1).numpy(), atol=1e-5)
    letters = scorer.listwise(PROMPTS[:1], [3], labels=["A", "B", "C"])[0]
    ids = scorer.verbalizer_ids(["A", "B", "C"])
    np.testing.assert_allclose(letters, _last_logits(model, tok, PROMPTS[0])[ids].log_softmax(-1).numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_embed_batched_equals_unbatched(scorer, pooling):
    batched = scorer.embed(PROMPTS, pooling=pooling)
    assert batched.shape == (len(PROMPTS), 32) and batched.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-9)
    single = np.concatenate([scorer.embed([p], pooling=pooling) for p in PROMPTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_embed_works_with_an_encoder(tiny):
    from transformers import BertConfig, BertModel

    _, tok = tiny
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, pad_token_id=tok.pad_token_id)).eval()
    enc = Scorer(bert, tok, "cpu", batch_size=3)
    batched = enc.embed(PROMPTS, pooling="cls")
    single = np.concatenate([enc.embed([p], pooling="cls") for p in PROMPTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    with pytest.raises(TypeError, match="no LM head"):
        enc.pointwise(PROMPTS[:1])


def test_peft_lora_model_scores():
    from peft import LoraConfig, get_peft_model

    base, tok = tiny_llama(seed=3)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # non-zero B so that the adapter actually changes the scores
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.train()
    scorer = Scorer(peft_model, tok, "cpu", batch_size=2)
    point = scorer.pointwise(PROMPTS)
    like = scorer.likelihood(PROMPTS, CANDIDATES)
    lists = scorer.listwise(PROMPTS, COUNTS)
    emb = scorer.embed(PROMPTS)
    assert peft_model.training  # mode restored
    assert np.isfinite(point).all() and all(np.isfinite(x).all() for x in like + lists)
    assert np.isfinite(emb).all()
    # The adapter is applied: same as the naive full forward of the peft model.
    peft_model.eval()
    p_ids = tok(PROMPTS[0])["input_ids"]
    c_ids = tok(CANDIDATES[0][1], add_special_tokens=False)["input_ids"]
    logp = _full_logprobs(peft_model, p_ids + c_ids)
    ref = sum(logp[len(p_ids) - 1 + k, t].item() for k, t in enumerate(c_ids)) / len(c_ids)
    assert abs(like[0][1] - ref) < 1e-4


def test_stats_count_work(tiny):
    model, tok = tiny
    scorer = Scorer(model, tok, "cpu", batch_size=2)
    scorer.pointwise(PROMPTS)
    n_tokens = sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert scorer.stats["tokens"] == n_tokens
    assert scorer.stats["forward_calls"] == 2
    assert scorer.stats["seconds"] > 0


# ---------------------------------------------------------------------- soft tokens (token-id prompts + embed_fn)


class _SoftTable:
    """A generic embed_fn: ids < V through the model's embeddings, ids >= V rows of a table; records the largest
    id the embedding layer ever saw."""

    def __init__(self, model, n_soft: int, seed: int = 0):
        self.emb = model.get_input_embeddings()
        self.vocab = self.emb.num_embeddings
        self.table = torch.randn(n_soft, self.emb.embedding_dim, generator=torch.Generator().manual_seed(seed))
        self.max_seen = -1
        self.calls = 0

    def __call__(self, ids):
        self.calls += 1
        soft = ids >= self.vocab
        inner = ids.masked_fill(soft, 0)
        self.max_seen = max(self.max_seen, int(inner.max()))
        return self.emb(inner).masked_scatter(soft.unsqueeze(-1), self.table[ids[soft] - self.vocab])


def _with_soft(tok, text: str, vocab: int, soft: list[int]) -> list[int]:
    """TEXT's ids with soft ids inserted after every 5th token (the first piece keeps BOS)."""
    ids = tok(text)["input_ids"]
    out = []
    for k, t in enumerate(ids):
        out.append(t)
        if k % 5 == 4:
            out.append(vocab + soft[(k // 5) % len(soft)])
    return out


def test_token_id_prompts_score_like_their_text(scorer, tiny):
    _, tok = tiny
    ids = [tok(p)["input_ids"] for p in PROMPTS + SHARED]
    np.testing.assert_array_equal(scorer.pointwise(ids), scorer.pointwise(PROMPTS + SHARED))
    mixed = [PROMPTS[0], ids[1], PROMPTS[2], ids[3]]
    np.testing.assert_array_equal(scorer.pointwise(mixed), scorer.pointwise(PROMPTS))


def test_soft_tokens_batched_equals_unbatched_and_naive(tiny):
    model, tok = tiny
    soft = _SoftTable(model, 8)
    # Per-user prompts that share a long prefix with soft tokens in it (the shared-prefix path), plus others.
    prompts = [_with_soft(tok, p, soft.vocab, [0, 1, 2]) for p in SHARED]
    prompts += [_with_soft(tok, p, soft.vocab, [k + 3]) for k, p in enumerate(PROMPTS)]
    shared = Scorer(model, tok, "cpu", batch_size=3, candidate_batch_size=4, share_prefix=16, embed_fn=soft)
    plain = Scorer(model, tok, "cpu", batch_size=3, share_prefix=0, embed_fn=soft)
    got = shared.pointwise(prompts)
    assert shared.stats["tokens"] < 0.8 * sum(len(p) for p in prompts)  # the shared prefixes were reused
    np.testing.assert_allclose(got, plain.pointwise(prompts), atol=1e-5)
    np.testing.assert_allclose(got, [plain.pointwise([p])[0] for p in prompts], atol=1e-5)
    yes, no = shared.verbalizer_ids(["Yes", "No"])
    with torch.no_grad():
        naive = [_log_odds(model(inputs_embeds=soft(torch.tensor([p]))).logits[0, -1], yes, no) for p in prompts]
    np.testing.assert_allclose(got, naive, atol=1e-4)
    counts = [3] * len(prompts)
    for a, b in zip(shared.listwise(prompts, counts), plain.listwise(prompts, counts), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert soft.calls > 0 and soft.max_seen < soft.vocab  # extended ids never reached the embedding layer


def test_soft_token_scores_follow_their_vectors(tiny):
    model, tok = tiny
    soft = _SoftTable(model, 4)
    with_soft = _with_soft(tok, PROMPTS[0], soft.vocab, [1])
    without = tok(PROMPTS[2])["input_ids"]
    scorer = Scorer(model, tok, "cpu", batch_size=2, embed_fn=soft)
    before = scorer.pointwise([with_soft, without])
    soft.table[1] += 3.0
    after = scorer.pointwise([with_soft, without])
    assert abs(after[0] - before[0]) > 1e-4 and after[1] == before[1]
