"""Batched LLM scoring engine: pointwise (Yes/No), candidate likelihood, listwise (index verbalizer), embeddings.

All scores come back as numpy float64. The engine is built for throughput without changing the numbers:

* prompts are sorted by length and batched; prompts are LEFT padded with a matching attention mask and
  position ids (``cumsum(mask) - 1``), so a batched score equals the unbatched one up to float noise;
* the transformer body (``base_model``) is called directly and the LM head is applied only where a
  prediction is needed (the last prompt position, or the positions that predict candidate tokens);
* ``likelihood`` encodes each prompt once, keeps its KV cache, and scores all its candidates in one batched
  forward over that cache (candidates right padded, positions continuing after the prompt). The candidate's
  last token is never fed (nothing reads its output), and the log-softmax is a ``logsumexp`` over the
  vocabulary at predicting positions only, gathered at the target tokens;
* ``pointwise``/``listwise`` detect prompts that share a long token prefix (TALLRec: one user's history
  followed by each candidate) and encode that prefix once, then only the differing suffixes over its cache.

Numerics: the LM head is computed in fp32 from the head's weights (``hidden.float() @ W.float().T``), for the
needed vocabulary columns only in ``pointwise``/``listwise``, so a bf16/fp16 model's logits are not rounded to its
dtype (rounding ties close target/negative scores, and ties rank the target low). ``pointwise`` returns log-odds,
which do not saturate the way probabilities do.

Prompts are text, or token-id lists already tokenised by the caller (used as given, special tokens included).
Text prompts are tokenised by ``encode_prompts``: special tokens are added, except to texts that already start
with the tokenizer's BOS text (chat-templated prompts), so no prompt starts with two BOS. Prompts longer than
``max_length`` are cut from the left after their BOS as a last resort: counted in ``Scorer.stats`` and warned
about once per Scorer (the prompt builder should fit prompts by dropping whole history lines).
With ``embed_fn`` (soft tokens, quadrant 1) every forward passes ``inputs_embeds=embed_fn(ids)`` instead of
``input_ids``, on every path (plain batches, shared prefixes and their suffixes, likelihood candidates), so ids
beyond the vocabulary can stand for vectors (CRM items/users) that ``embed_fn`` maps to the model's hidden size.

The model may be a ``transformers`` causal LM, a peft-wrapped one, or (for ``embed``) an encoder such as BERT.
Heads with post-processing are handled for the two known cases (``final_logit_softcapping``, ``logit_scale``).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from llmrec_cli.llm.head import LMHead
from llmrec_cli.llm.prefix import Prefix, select_cache, shared_prefix_groups
from llmrec_cli.llm.tokens import cut_left, encode_prompts

__all__ = ["Prompt", "Scorer", "left_pad", "right_pad"]

logger = logging.getLogger(__name__)

#: A prompt: text, or token ids tokenised by the caller (special tokens included).
Prompt = str | Sequence[int]


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if len(seq):
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, cols] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, cols] = 1
    return ids, mask


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of shape [n, max_len], sequences aligned to the right."""
    return _pad(seqs, pad_id, left=True)


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of shape [n, max_len], sequences aligned to the left."""
    return _pad(seqs, pad_id, left=False)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: 0 at each row's first real token (pads get 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class Scorer:
    """Scores prompts with a causal LM (or embeds texts with any transformer), in batches.

    Args:
        model: a ``transformers`` model (causal LM, peft-wrapped causal LM, or an encoder for ``embed``).
            It is moved to ``device`` unless it was dispatched with a ``device_map``; it is put in eval mode
            while scoring and its previous mode is restored afterwards.
        tokenizer: a fast tokenizer; its pad token is used (falls back to eos, then 0). Its padding side
            is ignored: the engine pads itself.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``"auto"``.
        batch_size: sequences per forward for prompts (pointwise, listwise, embed, likelihood prompts).
        max_length: a last resort: prompts longer than this keep their leading BOS (when they start with
            the tokenizer's BOS id) and their LAST tokens (the question and answer cue are at the end), up to
            ``max_length`` in all. Cuts are counted in ``stats`` and warned about once per Scorer; fit prompts
            in the prompt builder instead (a left cut drops the chat header and instructions).
        candidate_batch_size: rows per forward over a cached prefix (``likelihood`` candidates, shared-prefix
            suffixes; default ``4 * batch_size``); prompts are grouped so that their rows fit in it.
        share_prefix: in ``pointwise``/``listwise``, prompts whose token ids share a prefix of at least this
            many tokens are encoded as prefix once + suffixes (0 disables).
        embed_fn: optional ``ids [B, T] -> inputs_embeds [B, T, H]`` used instead of the model's own input
            embeddings (pads are ordinary token ids); it may map ids >= the vocabulary size to other vectors.

    ``self.stats`` accumulates ``tokens`` (real, non-pad tokens fed to the model), ``forward_calls``,
    ``seconds``, ``truncated_prompts`` (token lists cut to ``max_length``) and ``truncated_tokens`` (tokens
    those cuts dropped) across calls; ``reset_stats()`` zeroes them.

    LM head (``llmrec_cli.llm.head.LMHead``, shared with the LoRA loop): a plain linear head is computed in fp32 from its weight (and bias), whatever
    the model's dtype. ``likelihood`` needs the whole vocabulary: it keeps an fp32 copy of a non-fp32 head
    weight (V x H x 4 bytes, e.g. 1 GiB for Llama-3.2-1B) for the Scorer's life, re-made when the weight tensor
    changes (storage or in-place version). Any other head (a peft-wrapped ``lm_head`` with LoRA or
    modules_to_save, a quantized or hooked layer) is called as a module and its output cast to fp32: its logits
    keep the rounding of its dtype.
    """

    def __init__(self, model, tokenizer, device: str, batch_size: int = 16, max_length: int = 1024,
                 candidate_batch_size: int | None = None, share_prefix: int = 32, embed_fn=None):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if not getattr(model, "hf_device_map", None):
            model.to(self.device)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length)
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1 token, not {max_length}")
        self.candidate_batch_size = max(1, int(candidate_batch_size or 4 * self.batch_size))
        self.share_prefix = int(share_prefix)
        self.embed_fn = embed_fn
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        # peft's PeftModel wraps the transformers model; its LoRA layers live inside the unwrapped one.
        self._lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._body = getattr(self._lm, "base_model", self._lm)
        self._head = LMHead(self._lm)  # fp32 logits; the LoRA loop computes its loss with the same head
        bos = getattr(tokenizer, "bos_token_id", None)
        self._bos_id = int(bos) if bos is not None else None
        self._warned_truncation = False
        self.reset_stats()

    def reset_stats(self) -> None:
        """Zero the counters of ``self.stats``."""
        self.stats = {"tokens": 0, "forward_calls": 0, "seconds": 0.0, "truncated_prompts": 0,
                      "truncated_tokens": 0}

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _scoring(self) -> Iterator[None]:
        """inference_mode + eval mode (restored) + wall-clock accounting."""
        was_training = self.model.training
        self.model.eval()
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stats["seconds"] += time.perf_counter() - start
            if was_training:
                self.model.train()

    @functools.cached_property
    def _cache_kwarg(self) -> str:
        """`cache` on transformers versions whose model forward takes it (past_key_values is deprecated there,
        removed in 5.40), `past_key_values` before."""
        try:
            params = inspect.signature(self._body.forward).parameters
        except (TypeError, ValueError):
            return "past_key_values"
        return "cache" if "cache" in params else "past_key_values"

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None,
                 cache=None, use_cache: bool = False, new_mask: torch.Tensor | None = None):
        """Run the transformer body (no LM head) and count tokens; returns its output object."""
        ids = ids.to(self.device)
        kwargs = {"input_ids": ids} if self.embed_fn is None else {"inputs_embeds": self.embed_fn(ids)}
        kwargs["attention_mask"] = mask.to(self.device)
        if positions is not None:
            kwargs["position_ids"] = positions.to(self.device)
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        if use_cache or cache is not None:
            kwargs["use_cache"] = True
        out = self._body(**kwargs)
        self.stats["forward_calls"] += 1
        self.stats["tokens"] += int((new_mask if new_mask is not None else mask).sum())
        return out

    def _encode(self, texts: Sequence[Prompt], special: bool = True) -> list[list[int]]:
        """Token ids (text through ``encode_prompts``), each list fitted to max_length (``_fit``); prompts
        (``special``) must not be empty. Token-id lists among TEXTS are taken as they are (the caller tokenised
        them), but fitted too."""
        ids = [None if isinstance(t, str) else list(t) for t in texts]
        strings = [i for i, t in enumerate(texts) if isinstance(t, str)]
        if strings:
            encoded = encode_prompts(self.tokenizer, [texts[i] for i in strings], special=special)
            for i, e in zip(strings, encoded, strict=True):
                ids[i] = e
        if special and any(len(s) == 0 for s in ids):
            raise ValueError("empty prompt: it has no token (and the tokenizer adds no BOS) to predict from")
        return self._fit(ids)

    def _fit(self, ids: list[list[int]]) -> list[list[int]]:
        """IDS with every list longer than max_length cut by ``_cut_left`` (BOS kept, then the last tokens).
        Cuts are added to ``stats`` (``truncated_prompts``, ``truncated_tokens``); the first one logs a warning."""
        cut = [len(s) - self.max_length for s in ids if len(s) > self.max_length]
        if not cut:
            return ids
        self.stats["truncated_prompts"] = self.stats.get("truncated_prompts", 0) + len(cut)
        self.stats["truncated_tokens"] = self.stats.get("truncated_tokens", 0) + sum(cut)
        if not self._warned_truncation:
            self._warned_truncation = True
            logger.warning("Scorer cut %d prompt(s) longer than max_length=%d, dropping %d token(s) from their start "
                           "(after the BOS, which is kept: chat header, instructions, oldest history); fit prompts in "
                           "the prompt builder instead (drop whole history lines). Further cuts are only counted "
                           "in Scorer.stats['truncated_prompts'/'truncated_tokens'].",
                           len(cut), self.max_length, sum(cut))
        return [cut_left(s, self.max_length, self._bos_id) if len(s) > self.max_length else s for s in ids]

    def _batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Indices sorted by length (longest first), in chunks of batch_size: little padding per batch."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size]

    def _packs(self, rows_per_item: Sequence[int]) -> Iterator[list[int]]:
        """Consecutive item positions grouped: at most batch_size items and candidate_batch_size rows, but
        always at least one item (its rows are then chunked)."""
        pack: list[int] = []
        rows = 0
        for pos, n in enumerate(rows_per_item):
            if pack and (len(pack) == self.batch_size or rows + n > self.candidate_batch_size):
                yield pack
                pack, rows = [], 0
            pack.append(pos)
            rows += n
        if pack:
            yield pack

    def _chunks(self, rows: list) -> list[list]:
        step = self.candidate_batch_size
        return [rows[s:s + step] for s in range(0, len(rows), step)]

    def _encode_prefixes(self, prefixes: Sequence[Sequence[int]]) -> Prefix:
        """Left-padded forward over the prefixes, keeping the KV cache and the last position's hidden state."""
        ids, mask = left_pad(prefixes, self.pad_id)
        out = self._forward(ids, mask, _positions(mask), use_cache=True)
        mask = mask.to(self.device)
        return Prefix(_cache_of(out), mask, mask.sum(1), out.last_hidden_state[:, -1])

    def _continue(self, prefix: Prefix, owner: torch.Tensor, feeds: Sequence[Sequence[int]],
                  keep_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [N, W, H] of ``feeds`` (right padded) fed after prefix rows ``owner`` (repeats
        allowed), with the feed mask [N, W]. ``keep_cache`` leaves ``prefix.cache`` usable afterwards."""
        feed, feed_mask = right_pad(feeds, self.pad_id)
        feed_mask = feed_mask.to(self.device)
        full_mask = torch.cat([prefix.mask[owner], feed_mask], dim=1)
        positions = prefix.lengths[owner, None] + torch.arange(feed.shape[1], device=self.device)[None, :]
        cache = select_cache(prefix.cache, owner, copy_first=keep_cache)
        out = self._forward(feed, full_mask, positions, cache=cache, new_mask=feed_mask)
        return out.last_hidden_state, feed_mask

    def _last_logits(self, prompts: Sequence[Prompt], token_ids: Sequence[int]) -> np.ndarray:
        """Logits [n, k] of ``token_ids`` at the next-token position after each prompt.

        Prompts without a shared prefix: left-padded batches. Prompts sharing a prefix: the prefix once,
        then their suffixes over its cache, reading each suffix's last real position.
        """
        encoded = self._encode(prompts)
        out = np.zeros((len(encoded), len(token_ids)), dtype=np.float64)
        cols = torch.as_tensor(list(token_ids), dtype=torch.long, device=self.device)
        groups = shared_prefix_groups(encoded, self.share_prefix, self.candidate_batch_size)
        singles = [g[0] for g, _ in groups if len(g) == 1]
        shared = sorted([(g, n) for g, n in groups if len(g) > 1], key=lambda gn: -gn[1])
        with self._scoring():
            for batch in self._batches([len(encoded[i]) for i in singles]):
                rows = [singles[b] for b in batch]
                ids, mask = left_pad([encoded[r] for r in rows], self.pad_id)
                hidden = self._forward(ids, mask, _positions(mask)).last_hidden_state[:, -1]
                out[rows] = self._head(hidden, cols).double().cpu().numpy()
            for pack in self._packs([len(g) for g, _ in shared]):
                groups_here = [shared[p] for p in pack]
                prefix = self._encode_prefixes([encoded[g[0]][:n] for g, n in groups_here])
                rows = [(k, i, encoded[i][n:]) for k, (g, n) in enumerate(groups_here) for i in g]
                chunks = self._chunks(rows)
                for c, chunk in enumerate(chunks):
                    owner = torch.as_tensor([k for k, _, _ in chunk], dtype=torch.long, device=self.device)
                    hidden, feed_mask = self._continue(prefix, owner, [f for _, _, f in chunk],
                                                       keep_cache=c < len(chunks) - 1)
                    last = hidden[torch.arange(len(chunk), device=self.device), feed_mask.sum(1) - 1]
                    out[[i for _, i, _ in chunk]] = self._head(last, cols).double().cpu().numpy()
        return out

    # ------------------------------------------------------------------ public API

    def verbalizer_ids(self, words: Sequence[str], prefix: str = " ") -> list[int]:
        """Token id of each word as it appears in the answer, after a space or colon by default.

        It is the first token of ``tokenizer(prefix + word, add_special_tokens=False)``; a word that already
        starts with whitespace is tokenised as given. Use ``prefix=""`` where the answer starts a new turn
        or line (chat templates). Raises ValueError when a word yields no token or two words share their
        first token (their scores would be identical).
        """
        ids: list[int] = []
        for word in words:
            text = word if word[:1].isspace() else prefix + word
            toks = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ValueError(f"verbalizer word {word!r} has no token")
            ids.append(int(toks[0]))
        seen: dict[int, str] = {}
        for word, tok in zip(words, ids, strict=True):
            if tok in seen:
                raise ValueError(f"verbalizer words {seen[tok]!r} and {word!r} share their first token {tok}")
            seen[tok] = word
        return ids

    def pointwise(self, prompts: Sequence[Prompt], yes: str = "Yes", no: str = "No", prefix: str = " ") -> np.ndarray:
        """Log-odds ``logit(yes) - logit(no)`` of the answer token right after each prompt (TALLRec), float64
        shape [n].

        Its sigmoid is P(yes) / (P(yes) + P(no)), the softmax over the two answer tokens; the log-odds rank the
        same way but do not saturate (two large odds would both be 1.0 as probabilities, and tie). Logits are
        fp32 (see ``_head``). ``prefix`` is what precedes the answer word (see ``verbalizer_ids``)."""
        if not prompts:
            return np.zeros(0, dtype=np.float64)
        logits = self._last_logits(prompts, self.verbalizer_ids([yes, no], prefix))
        return logits[:, 0] - logits[:, 1]

    def listwise(self, prompts: Sequence[Prompt], num_candidates: Sequence[int],
                 labels: Sequence[str] | None = None, prefix: str = " ") -> list[np.ndarray]:
        """Log-softmax over the index labels of each prompt's candidates at the answer position (LlamaRec).

        Prompt ``i`` lists ``num_candidates[i]`` candidates labelled ``labels[:C]`` (default "1".."C"); the
        score of each candidate is the log-probability of its label's first token, renormalised over the C
        labels. ``prefix`` is what precedes the label (see ``verbalizer_ids``). Returns one array [C_i] per
        prompt.
        """
        if len(prompts) != len(num_candidates):
            raise ValueError("prompts and num_candidates differ in length")
        if not prompts:
            return []
        most = max(num_candidates)
        labels = [str(i) for i in range(1, most + 1)] if labels is None else list(labels)
        if len(labels) < most:
            raise ValueError(f"{len(labels)} labels for up to {most} candidates")
        logits = self._last_logits(prompts, self.verbalizer_ids(labels[:most], prefix))
        out = []
        for row, count in zip(logits, num_candidates, strict=True):
            sub = row[:count]
            top = sub.max()
            out.append(sub - (top + np.log(np.exp(sub - top).sum())))
        return out

    def likelihood(self, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Mean per-token log p(candidate | prompt) for each prompt's candidates; one array [C_i] per prompt.

        The log-softmax is over the whole vocabulary, with the head in fp32 (see ``_head``).

        Candidates are tokenised on their own (no special tokens) and appended to the prompt's tokens, so
        include a leading space in the candidate text when the continuation should start with one.
        """
        if len(prompts) != len(candidates):
            raise ValueError("prompts and candidates differ in length")
        p_ids = self._encode(prompts)
        c_ids = [self._encode(list(c), special=False) if len(c) else [] for c in candidates]
        for i, cands in enumerate(c_ids):
            for j, toks in enumerate(cands):
                if not toks:
                    raise ValueError(f"candidate {candidates[i][j]!r} of prompt {i} has no token")
        out = [np.zeros(len(c), dtype=np.float64) for c in c_ids]
        # Longest prompts first (little padding), prompts without candidates skipped.
        order = [i for i in sorted(range(len(p_ids)), key=lambda i: -len(p_ids[i])) if c_ids[i]]
        with self._scoring():
            for pack in self._packs([len(c_ids[i]) for i in order]):
                self._score_pack([order[p] for p in pack], p_ids, c_ids, out)
        return out

    def embed(self, texts: Sequence[str], pooling: str = "mean") -> np.ndarray:
        """L2-normalised text embeddings [n, d] from the last hidden states (right padded).

        ``pooling``: "mean" over non-pad tokens, "cls" (first token) or "last" (last non-pad token, the
        usual choice for causal LMs).
        """
        if pooling not in ("mean", "cls", "last"):
            raise ValueError(f"pooling must be mean, cls or last, not {pooling!r}")
        encoded = self._encode(texts)
        vecs: list[np.ndarray | None] = [None] * len(encoded)
        with self._scoring():
            for rows in self._batches([len(s) for s in encoded]):
                ids, mask = right_pad([encoded[r] for r in rows], self.pad_id)
                out = self._forward(ids, mask)
                hidden = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None \
                    else out[0]
                hidden = hidden.float()
                m = mask.to(hidden.device)
                if pooling == "mean":
                    pooled = (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
                elif pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    pooled = hidden[torch.arange(len(rows), device=hidden.device), m.sum(1) - 1]
                pooled = torch.nn.functional.normalize(pooled, dim=-1).double().cpu().numpy()
                for k, r in enumerate(rows):
                    vecs[r] = pooled[k]
        if not vecs:
            return np.zeros((0, 0), dtype=np.float64)
        return np.stack(vecs)

    # ------------------------------------------------------------------ likelihood internals

    def _score_pack(self, pack: list[int], p_ids, c_ids, out: list[np.ndarray]) -> None:
        """Encode the pack's prompts once (KV cache), then score their candidates over the cache."""
        dev = self.device
        prefix = self._encode_prefixes([p_ids[i] for i in pack])
        # First candidate token: predicted at the last prompt position, shared by all of a prompt's candidates.
        first_logits = self._head(prefix.last_hidden)                       # [P, V]
        first_lse = torch.logsumexp(first_logits, dim=-1)                   # [P]
        chunks = self._chunks([(k, i, j) for k, i in enumerate(pack) for j in range(len(c_ids[i]))])
        for c, chunk in enumerate(chunks):
            toks = [c_ids[i][j] for _, i, j in chunk]
            owner = torch.as_tensor([k for k, _, _ in chunk], dtype=torch.long, device=dev)
            first = torch.as_tensor([t[0] for t in toks], dtype=torch.long, device=dev)
            total = first_logits[owner, first] - first_lse[owner]           # log p(token 0)
            if max(len(t) for t in toks) > 1:
                # Feed tokens 0..n-2 after the prompt; their outputs predict tokens 1..n-1.
                hidden, keep = self._continue(prefix, owner, [t[:-1] for t in toks],
                                              keep_cache=c < len(chunks) - 1)
                keep = keep.bool()
                target = right_pad([t[1:] for t in toks], self.pad_id)[0].to(dev)[keep]
                logits = self._head(hidden[keep])                           # [M, V], M real positions only
                logp = logits.gather(1, target[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
                row_of = torch.arange(len(chunk), device=dev)[:, None].expand_as(keep)[keep]
                total = total.index_add(0, row_of, logp)
            lengths = torch.as_tensor([len(t) for t in toks], dtype=torch.float64, device=dev)
            for (_, i, j), score in zip(chunk, (total.double() / lengths).cpu().numpy(), strict=True):
                out[i][j] = score


def _cache_of(out):
    """The KV cache of a model output: `cache` on transformers versions that renamed it (reading
    `past_key_values` there warns that it is deprecated), `past_key_values` before."""
    cache = getattr(out, "cache", None) if "cache" in getattr(out, "keys", lambda: ())() else None
    return cache if cache is not None else out.past_key_values
