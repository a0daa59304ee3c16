"""Prompt tokenisation shared by scoring, training and generation (no torch): one BOS, BOS-keeping cuts.

`encode_prompts` is the one way a text prompt becomes token ids, so training encodes exactly what the Scorer
scores and a chat-templated prompt (which already starts with its BOS text) never gets a second BOS.
"""
from __future__ import annotations

from collections.abc import Sequence


def encode_prompts(tokenizer, texts: Sequence[str], special: bool = True) -> list[list[int]]:
    """Token ids of each text, adding the tokenizer's special tokens (``special``) only where they are missing.

    A text that already starts with the tokenizer's ``bos_token`` string (a chat template rendered with
    ``tokenize=False`` starts with it, e.g. Llama-3's ``<|begin_of_text|>``) is tokenised with
    ``add_special_tokens=False``: the template already wrote the special tokens it wants. Other texts get
    ``add_special_tokens=special``. Guarantees: the order of TEXTS is kept, and no result starts with two BOS
    ids (a leading run of BOS ids is cut to one). Tokenizers without a BOS behave as plain tokenisation.
    """
    texts = list(texts)
    bos_text = getattr(tokenizer, "bos_token", None) if special else None
    templated = [bool(bos_text) and t.startswith(bos_text) for t in texts]
    ids: list[list[int]] = [[] for _ in texts]
    for has_bos in (False, True):
        rows = [i for i, flag in enumerate(templated) if flag == has_bos]
        if rows:
            encoded = tokenizer([texts[i] for i in rows], add_special_tokens=special and not has_bos)["input_ids"]
            for i, e in zip(rows, encoded, strict=True):
                ids[i] = list(e)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids = [one_bos(s, int(bos)) for s in ids]
    return ids


def one_bos(ids: list[int], bos: int) -> list[int]:
    """IDS with a leading run of BOS ids cut to one."""
    start = 0
    while start + 1 < len(ids) and ids[start] == bos and ids[start + 1] == bos:
        start += 1
    return ids[start:]


def cut_left(ids: list[int], width: int, bos: int | None) -> list[int]:
    """The last ``width`` tokens of IDS, but a leading BOS stays first (the cut is right after it)."""
    keep = ids[:1] if bos is not None and width > 1 and ids[0] == bos else []
    return keep + ids[len(ids) - (width - len(keep)):]
