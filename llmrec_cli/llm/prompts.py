"""Prompts: a user's history (most recent last, truncated to a token budget) and the candidates, as text.

Templates are plain `str.format` strings with the fields below; the rendered template text, the verbalizer
token ids and one example prompt are logged with every LLM run. Few-shot demonstrations come from other
users' training data only (their last training item is the answer), never from valid/test targets: the
builder reads a `TrainView` (llmrec_cli/data/views.py), and the history it shows is the one it is given.

Fields: {noun} ("movie"), {nouns} ("movies"), {verb}/{verbed} ("watch"/"watched", else "choose"/"chosen"), {history} (one line per item), {candidate} (pointwise),
{candidates} (listwise: one labelled line per candidate), {demos} (few-shot block, may be empty).

Length: the history block keeps the last `max_history` items within `history_tokens`; then the whole prompt
(chat template, BOS and `reserve` tokens for what follows it included) must fit `max_length`. A prompt that
does not fit loses whole demonstrations first, then whole oldest history lines (at least one line stays),
never the header, the question or the BOS. `stats` counts prompts, those shortened, the demonstrations,
history lines and tokens dropped, and prompts still over the budget (the Scorer then cuts them, counted).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from llmrec_cli.llm.tokens import encode_prompts

TEMPLATES = {
    "pointwise": (
        "{demos}A user has {verbed} these {nouns}, most recent last:\n{history}\n"
        "Will the user like the {noun} \"{candidate}\"? Answer Yes or No.\nAnswer:"
    ),
    "likelihood": (
        "{demos}A user has {verbed} these {nouns}, most recent last:\n{history}\n"
        "The next {noun} the user will {verb} is:"
    ),
    "listwise": (
        "{demos}A user has {verbed} these {nouns}, most recent last:\n{history}\n"
        "Candidates:\n{candidates}\n"
        "Which candidate will the user {verb} next? Answer with its letter.\nAnswer:"
    ),
    "generate": (
        "{demos}A user has {verbed} these {nouns}, most recent last:\n{history}\n"
        "Candidates:\n{candidates}\n"
        "Rank all {n} candidates from the one the user will most likely {verb} next to the least likely. "
        "Answer with the candidates' letters only, best first, separated by commas (for example: C, A, B).\nAnswer:"
    ),
    "generate_cot": (
        "{demos}A user has {verbed} these {nouns}, most recent last:\n{history}\n"
        "Candidates:\n{candidates}\n"
        "Rank all {n} candidates from the one the user will most likely {verb} next to the least likely. "
        "Think step by step about what the user likes, then end with one line 'Answer: ' followed by the "
        "candidates' letters, best first, separated by commas."
    ),
    "mim": (
        "{demos}A user has {verbed} these {nouns}, most recent last, one of them hidden:\n{history}\n"
        "Candidates:\n{candidates}\n"
        "Which candidate is the hidden {noun}? Answer with its letter.\nAnswer:"
    ),
}
LETTERS = [chr(ord("A") + i) for i in range(26)]


ITEM_TEXT = ("full", "title")
#: The text of item index 0 (padding): what a masked-item prompt (aux task `mim`) shows for the hidden item.
HIDDEN = "[hidden]"


def item_texts(items: pd.DataFrame, style: str = "full") -> list[str]:
    """Short text per item index (0 = padding, shown as HIDDEN): STYLE `full` is 'Title (year), genres' or
    'Title, categories'; `title` is 'Title (year)' (shorter prompts)."""
    if style not in ITEM_TEXT:
        from llmrec_cli.errors import ConfigError

        raise ConfigError(f"method.item_text={style} is not one of {', '.join(ITEM_TEXT)}")
    out = [HIDDEN] + [""] * int(items["item_idx"].max())
    for row in items.itertuples(index=False):
        text = str(row.title)
        year = getattr(row, "year", None)
        if year is not None and not pd.isna(year):
            text += f" ({int(year)})"
        for col in ("genres", "categories") if style == "full" else ():
            value = getattr(row, col, None)
            if isinstance(value, str) and value:
                text += ", " + value.replace("|", ", ")
                break
        out[int(row.item_idx)] = text
    return out


HISTORY_CACHE = 1 << 16  # distinct histories whose fitted lines are kept (cleared when full)
STAT_KEYS = ("prompts", "shortened", "dropped_demos", "dropped_history_lines", "dropped_tokens", "over_budget")


@dataclass
class PromptBuilder:
    data: object  # a TrainView: `items`, `n_users`, `train_sequence(u)`
    tokenizer: object
    noun: str = "item"
    max_history: int = 20
    history_tokens: int = 512
    use_chat_template: bool = True
    num_demos: int = 0
    seed: int = 0
    max_length: int | None = None  # whole-prompt token budget (model.max_length); None: no limit
    item_text: str = "full"  # full | title (method.item_text)
    stats: dict = field(default_factory=lambda: dict.fromkeys(STAT_KEYS, 0))

    def __post_init__(self):
        self.texts = item_texts(self.data.items, self.item_text)
        self.chat = bool(self.use_chat_template and getattr(self.tokenizer, "chat_template", None))
        self._demo_cache: dict[tuple[int, str], list[str]] = {}
        self._text_tokens: dict[int, int] = {}
        self._history_cache: dict[tuple[int, ...], tuple[str, ...]] = {}

    # ---- token counts ------------------------------------------------------------------------------
    def _size(self, text: str, special: bool = False) -> int:
        """Tokens of TEXT (with the prompt's special tokens when SPECIAL, never a doubled BOS)."""
        if special:
            return len(encode_prompts(self.tokenizer, [text])[0])
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def candidate_tokens(self, items) -> int:
        """The most tokens any of ITEMS' texts takes as a continuation (after the answer prefix)."""
        most = 0
        for i in items:
            i = int(i)
            if i not in self._text_tokens:
                self._text_tokens[i] = self._size(self.answer_prefix + self.texts[i])
            most = max(most, self._text_tokens[i])
        return most

    # ---- pieces ------------------------------------------------------------------------------------
    def history_lines(self, items: np.ndarray) -> list[str]:
        """The last `max_history` items, one line each, dropping the oldest until `history_tokens` fits.

        Memoised per shown history (a pointwise prompt per candidate, the valid and test prompts and the
        permutations of one user share it), so a history is tokenised for its budget once, not once per prompt."""
        shown = tuple(int(i) for i in items[-self.max_history :]) if self.max_history > 0 else ()
        cached = self._history_cache.get(shown)
        if cached is None:
            lines = [f"- {self.texts[i]}" for i in shown]
            while len(lines) > 1 and self._size("\n".join(lines)) > self.history_tokens:
                lines = lines[1:]
            if len(self._history_cache) >= HISTORY_CACHE:
                self._history_cache.clear()
            cached = self._history_cache[shown] = tuple(lines)
        return list(cached)

    def candidate_block(self, items) -> str:
        if len(items) > len(LETTERS):
            raise ValueError(f"listwise prompts label at most {len(LETTERS)} candidates, got {len(items)}")
        return "\n".join(f"{LETTERS[k]}. {self.texts[int(i)]}" for k, i in enumerate(items))

    def demo_blocks(self, user: int, kind: str) -> list[str]:
        """Few-shot demonstrations from other users' training sequences (their last training item answers)."""
        if self.num_demos <= 0:
            return []
        key = (int(user), kind)
        if key not in self._demo_cache:
            rng = np.random.default_rng([self.seed, user])
            blocks = []
            for v in rng.permutation(self.data.n_users):
                if len(blocks) == self.num_demos:
                    break
                seq = self.data.train_sequence(int(v))
                if v == user or len(seq) < 3:
                    continue
                history, answer = "\n".join(self.history_lines(seq[:-1])), self.texts[int(seq[-1])]
                if kind == "pointwise":
                    blocks.append(self._fill("pointwise", history=history, candidate=answer, demos="") + " Yes")
                elif kind == "likelihood":
                    blocks.append(self._fill("likelihood", history=history, demos="") + f" {answer}")
                else:
                    blocks.append(f"(Example) A user's {self.noun}s, most recent last:\n{history}\nNext: {answer}")
            self._demo_cache[key] = blocks
        return list(self._demo_cache[key])

    def demos(self, user: int, kind: str) -> str:
        blocks = self.demo_blocks(user, kind)
        return "\n\n".join(blocks) + "\n\n" if blocks else ""

    def _fill(self, kind: str, **fields) -> str:
        verb, verbed = ("watch", "watched") if self.noun == "movie" else ("choose", "chosen")
        return TEMPLATES[kind].format(noun=self.noun, nouns=self.noun + "s", verb=verb, verbed=verbed, **fields)

    def wrap(self, text: str) -> str:
        """Apply the model's chat template (user turn + generation prompt) when it has one."""
        if not self.chat:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    @property
    def answer_prefix(self) -> str:
        """What precedes a verbalizer word: a space after 'Answer:', nothing at the start of an assistant turn."""
        return "" if self.chat else " "

    # ---- prompts -----------------------------------------------------------------------------------
    def build(self, kind: str, user: int, history: np.ndarray, *, demos: bool = True, lead: str = "",
              reserve: int = 1, **fields) -> str:
        """The KIND prompt for USER showing HISTORY (LEAD: a line block before the history lines), fitted into
        `max_length - reserve` tokens as the module docstring says."""
        lines = self.history_lines(np.asarray(history))
        blocks = self.demo_blocks(user, kind) if demos else []

        def render() -> str:
            shown = "\n\n".join(blocks) + "\n\n" if blocks else ""
            return self.wrap(self._fill(kind, history=lead + "\n".join(lines), demos=shown, **fields))

        text = render()
        self.stats["prompts"] += 1
        if self.max_length is None:
            return text
        budget = int(self.max_length) - int(reserve)
        first = n = self._size(text, special=True)
        if n <= budget:
            return text
        dropped_demos = dropped_lines = 0
        while n > budget and (blocks or len(lines) > 1):
            if blocks:
                blocks.pop()
                dropped_demos += 1
            else:
                lines = lines[1:]
                dropped_lines += 1
            text = render()
            n = self._size(text, special=True)
        self.stats["shortened"] += 1
        self.stats["dropped_demos"] += dropped_demos
        self.stats["dropped_history_lines"] += dropped_lines
        self.stats["dropped_tokens"] += first - n
        self.stats["over_budget"] += int(n > budget)
        return text

    def pointwise(self, user: int, history: np.ndarray, item: int) -> str:
        return self.build("pointwise", user, history, candidate=self.texts[int(item)])

    def likelihood(self, user: int, history: np.ndarray, items) -> tuple[str, list[str]]:
        prompt = self.build("likelihood", user, history, reserve=self.candidate_tokens(items))
        return prompt, [self.answer_prefix + self.texts[int(i)] for i in items]

    def listwise(self, user: int, history: np.ndarray, items) -> str:
        return self.build("listwise", user, history, candidates=self.candidate_block(items))

    def generate(self, user: int, history: np.ndarray, items, cot: bool = False, reserve: int = 1) -> str:
        """LLMRank's prompt: rank every candidate, answer with letters (COT: reason first, answer last)."""
        return self.build("generate_cot" if cot else "generate", user, history, reserve=reserve,
                          candidates=self.candidate_block(items), n=len(items))

    def stat_metrics(self, prefix: str = "prompt") -> dict[str, float]:
        """`stats` as run metrics: `prompt/shortened`, `prompt/dropped_tokens`, ..., `prompt/shortened_share`."""
        out = {f"{prefix}/{k}": float(v) for k, v in self.stats.items()}
        out[f"{prefix}/shortened_share"] = self.stats["shortened"] / max(1, self.stats["prompts"])
        return out
