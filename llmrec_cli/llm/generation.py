"""Batched greedy generation with a frozen causal LM: returns only the newly generated text of each prompt.

Prompts are sorted by length and batched (`batch_size`), LEFT padded with an attention mask (the model
derives position ids from the mask), cut to their last `max_length` tokens, and decoded without special
tokens. Greedy decoding (`do_sample=False`) makes a batched generation equal the one-by-one generation.
The pad token falls back to eos (then 0) when the tokenizer has none. `GenerationStats` counts prompts,
prompt tokens, generated tokens (up to and including the first eos) and seconds. `GenerationCache` keeps
generations in an append-only JSONL file, durable batch by batch, so an interrupted job resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llmrec_cli.llm.scoring import left_pad
from llmrec_cli.utils.io import atomic_write

__all__ = ["GenerationCache", "GenerationStats", "generate", "iter_generate"]


@dataclass
class GenerationStats:
    prompts: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


def _pad_id(tokenizer) -> int:
    for pad in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pad is not None:
            return int(pad)
    return 0


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos = eos if isinstance(eos, (list, tuple)) else [eos]
    return {int(e) for e in eos if e is not None}


def iter_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8,
                  max_length: int = 1024, add_special_tokens: bool = True,
                  stats: GenerationStats | None = None) -> Iterator[list[tuple[int, str]]]:
    """Yield, batch by batch, [(prompt index, generated text)]; longest prompts first.

    With `add_special_tokens` the tokenizer's special tokens are added except a BOS the prompt text already
    starts with (a chat template's), so no prompt ever begins with two BOS (`tokens.encode_prompts`).
    """
    from llmrec_cli.llm.tokens import cut_left, encode_prompts

    stats = stats if stats is not None else GenerationStats()
    pad_id, eos = _pad_id(tokenizer), _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    bos = getattr(tokenizer, "bos_token_id", None)
    encoded = [cut_left(ids, max_length, bos) if len(ids) > max_length else ids
               for ids in encode_prompts(tokenizer, list(prompts), special=add_special_tokens)]
    if any(not ids for ids in encoded):
        raise ValueError("empty prompt: it has no token to generate from")
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), max(1, int(batch_size))):
            rows = order[start:start + max(1, int(batch_size))]
            ids, mask = left_pad([encoded[r] for r in rows], pad_id)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                     max_new_tokens=int(max_new_tokens), pad_token_id=pad_id,
                                     num_beams=1, temperature=None, top_p=None, top_k=None)
            stats.seconds += time.perf_counter() - t0
            new = out[:, ids.shape[1]:].cpu().tolist()
            texts = []
            for seq in new:
                end = next((k + 1 for k, tok in enumerate(seq) if tok in eos), len(seq))
                stats.new_tokens += end
                texts.append(tokenizer.decode(seq[:end], skip_special_tokens=True).strip())
            stats.prompts += len(rows)
            stats.prompt_tokens += int(mask.sum())
            yield list(zip(rows, texts, strict=True))
    finally:
        if was_training:
            model.train()


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8,
             max_length: int = 1024, add_special_tokens: bool = True,
             stats: GenerationStats | None = None) -> list[str]:
    """The generated text of each prompt, in prompt order (see `iter_generate`)."""
    out = [""] * len(prompts)
    for batch in iter_generate(model, tokenizer, prompts, max_new_tokens, batch_size, max_length,
                               add_special_tokens, stats):
        for i, text in batch:
            out[i] = text
    return out


class GenerationCache:
    """Generated texts keyed by a hash of their prompt, in a JSONL file appended batch by batch.

    Each line is `{"key": <sha256 of the prompt, 24 hex>, "id": <label>, "text": <generation>}`, written and
    fsync'ed as soon as its batch is done, so a killed run resumes where it stopped. A torn last line (the
    process died mid-write) is dropped when the file is read, and the file is rewritten atomically without it.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.texts: dict[str, str] = {}
        if self.path.is_file():
            self._read()

    @staticmethod
    def key(prompt: str) -> str:
        return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:24]

    def _read(self) -> None:
        good, torn = [], False
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                self.texts[str(row["key"])] = str(row["text"])
                good.append(line)
            except (ValueError, KeyError, TypeError):
                torn = True
        if torn:
            atomic_write(self.path, "".join(f"{line}\n" for line in good))

    def get(self, prompt: str) -> str | None:
        return self.texts.get(self.key(prompt))

    def add(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Append [(prompt, label, text)] durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for prompt, label, text in rows:
            key = self.key(prompt)
            self.texts[key] = text
            lines.append(json.dumps({"key": key, "id": label, "text": text}, ensure_ascii=False) + "\n")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
