"""Reading a ranking out of an LLM's free-text answer (LLMRank-style `generate` scoring).

The prompt lists the candidates with letters and asks for them ranked, best first. Answers come back in every
shape: "C, A, B", "1. B\\n2. A", "(B) > (A)", a list of titles, or a chain of thought that ends in one of those.
`parse_ranking` reads, in this order of preference, letters, then 1-based candidate numbers, then titles (exact,
then fuzzy with difflib), from the part after the last "answer:" marker when there is one (chain-of-thought).
Repeated candidates count once (at their first place); labels or numbers beyond the list are out-of-candidate
mentions. `ranking_scores` turns a parse into scores: ranked candidates in their order, the unranked ones below
all of them in a seeded order (so a missing candidate never wins a tie by position).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import numpy as np

ANSWER_MARKERS = re.compile(r"(?:final answer|answer|ranking)\s*[:：]", re.IGNORECASE)
LETTER = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")
#: "I think", "A great movie": a capital I or A followed by a lower-case word is prose, not a label.
PROSE = re.compile(r"\b[AI](?=\s+[a-z'])")
NUMBER = re.compile(r"(?<![\d.])(\d{1,3})(?![\d])")


@dataclass
class Parsed:
    """Candidate positions (0-based) in answer order, and what went wrong on the way."""

    order: list[int] = field(default_factory=list)
    duplicates: int = 0  # candidates named more than once (each repeat counts)
    out_of_candidates: int = 0  # labels/numbers that name no candidate
    how: str = "none"  # letters | numbers | titles | none

    @property
    def valid(self) -> bool:
        return bool(self.order)


def final_part(text: str) -> str:
    """The text after the last answer marker ("Answer:", "Final answer:", "Ranking:"), else the whole text."""
    marks = list(ANSWER_MARKERS.finditer(text))
    return text[marks[-1].end():] if marks else text


def _collect(tokens: list[int], n: int) -> Parsed:
    out = Parsed()
    seen: set[int] = set()
    for k in tokens:
        if not 0 <= k < n:
            out.out_of_candidates += 1
        elif k in seen:
            out.duplicates += 1
        else:
            seen.add(k)
            out.order.append(k)
    return out


def parse_ranking(text: str, n: int, titles: list[str] | None = None, cutoff: float = 0.75) -> Parsed:
    """Parse TEXT as a ranking of N candidates labelled A, B, ... (TITLES: their texts, for title answers)."""
    body = final_part(text or "")
    letters = [ord(m) - ord("A") for m in LETTER.findall(PROSE.sub(" ", body))]
    if letters:
        parsed = _collect(letters, n)
        if parsed.valid:
            parsed.how = "letters"
            return parsed
    numbers = [int(m) - 1 for m in NUMBER.findall(body)]
    if numbers and not _enumerated(body, numbers):
        parsed = _collect(numbers, n)
        if parsed.valid:
            parsed.how = "numbers"
            return parsed
    if titles:
        parsed = _titles(body, titles, cutoff)
        if parsed.valid:
            parsed.how = "titles"
            return parsed
    return Parsed()


def _enumerated(body: str, numbers: list[int]) -> bool:
    """True when the numbers are just a list's own numbering ("1. Title\\n2. Title"): 1, 2, 3 ... at line starts."""
    starts = [int(m) - 1 for m in re.findall(r"(?m)^\s*(\d{1,3})[.)]", body)]
    return len(starts) >= 2 and starts == list(range(len(starts))) and len(starts) == len(numbers)


def _titles(body: str, titles: list[str], cutoff: float) -> Parsed:
    """Titles named in BODY, in the order they appear: each title (or the title without its trailing
    "(year)") found as a whole phrase, case-insensitive; when none is, each line / ';' / '>' separated piece
    matched by difflib similarity >= CUTOFF."""
    low = body.lower()
    hits = []
    for k, title in enumerate(titles):
        for variant in dict.fromkeys((title.lower().strip(), YEAR.sub("", title).lower().strip())):
            if len(variant) < 3:
                continue
            m = re.search(rf"(?<!\w){re.escape(variant)}(?!\w)", low)
            if m:
                hits.append((m.start(), -len(variant), k))
                break
    if hits:
        return _collect([k for _, _, k in sorted(hits)], len(titles))
    lowered = [t.lower().strip() for t in titles]
    found = []
    for piece in re.split(r"[\n;>]", low):
        piece = re.sub(r"^\s*(?:\d{1,3}[.)]|[-*•])\s*", "", piece).strip(" \"'.*")
        close = difflib.get_close_matches(piece, lowered, n=1, cutoff=cutoff) if piece else []
        if close:
            found.append(lowered.index(close[0]))
    return _collect(found, len(titles))


YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def ranking_scores(parsed: Parsed, n: int, rng: np.random.Generator) -> np.ndarray:
    """Scores [n]: the k-th ranked candidate gets 2n - k; unranked ones a seeded order of values below n."""
    scores = np.empty(n, dtype=np.float64)
    rest = [k for k in range(n) if k not in set(parsed.order)]
    for place, k in enumerate(parsed.order):
        scores[k] = 2 * n - place
    for place, k in enumerate(rng.permutation(rest) if rest else []):
        scores[int(k)] = n - 1 - place
    return scores


def validity(parses: list[Parsed], n: int) -> dict[str, float]:
    """Output-validity rates over answers (LLaRA's ValidRatio, RecLM-eval's error rates)."""
    if not parses:
        return {}
    m = len(parses)
    return {"valid_answer_rate": sum(p.valid for p in parses) / m,
            "duplicate_rate": sum(p.duplicates > 0 for p in parses) / m,
            "out_of_candidates_rate": sum(p.out_of_candidates > 0 for p in parses) / m,
            "mean_candidates_ranked": float(np.mean([len(p.order) for p in parses])),
            "complete_rate": sum(len(p.order) == n for p in parses) / m}
