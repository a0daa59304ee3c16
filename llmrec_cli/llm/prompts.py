"""Prompts: a user's history (most recent last, truncated to a token budget) and the candidates, as text.

Templates are plain `str.format` strings with the fields below; the rendered template text, the verbalizer
token ids and one example prompt are logged with every LLM run. Few-shot demonstrations come from other
users' training data only (their last training item is the answer), never from valid/test targets.

Fields: {noun} ("movie"), {nouns} ("movies"), {verb}/{verbed} ("watch"/"watched", else "choose"/"chosen"), {history} (one line per item), {candidate} (pointwise),
{candidates} (listwise: one labelled line per candidate), {demos} (few-shot block, may be empty).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrec_cli.data.prepare import PreparedData

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
}
LETTERS = [chr(ord("A") + i) for i in range(26)]


def item_texts(items: pd.DataFrame) -> list[str]:
    """Short text per item index (0 = padding): 'Title (year), genres' or 'Title, categories, brand'."""
    out = [""] * (int(items["item_idx"].max()) + 1)
    for row in items.itertuples(index=False):
        text = str(row.title)
        year = getattr(row, "year", None)
        if year is not None and not pd.isna(year):
            text += f" ({int(year)})"
        for col in ("genres", "categories"):
            value = getattr(row, col, None)
            if isinstance(value, str) and value:
                text += ", " + value.replace("|", ", ")
                break
        out[int(row.item_idx)] = text
    return out


@dataclass
class PromptBuilder:
    data: PreparedData
    tokenizer: object
    noun: str = "item"
    max_history: int = 20
    history_tokens: int = 512
    use_chat_template: bool = True
    num_demos: int = 0
    seed: int = 0

    def __post_init__(self):
        self.texts = item_texts(self.data.items)
        self.chat = bool(self.use_chat_template and getattr(self.tokenizer, "chat_template", None))

    # ---- pieces ------------------------------------------------------------------------------------
    def history_lines(self, items: np.ndarray) -> str:
        """The last `max_history` items, one per line, dropping the oldest until the token budget fits."""
        lines = [f"- {self.texts[int(i)]}" for i in items[-self.max_history :]]
        while len(lines) > 1 and len(self.tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"]) \
                > self.history_tokens:
            lines = lines[1:]
        return "\n".join(lines)

    def candidate_block(self, items) -> str:
        if len(items) > len(LETTERS):
            raise ValueError(f"listwise prompts label at most {len(LETTERS)} candidates, got {len(items)}")
        return "\n".join(f"{LETTERS[k]}. {self.texts[int(i)]}" for k, i in enumerate(items))

    def demos(self, user: int, kind: str) -> str:
        """Few-shot demonstrations from other users' training sequences (their last training item answers)."""
        if self.num_demos <= 0:
            return ""
        rng = np.random.default_rng([self.seed, user])
        pool = [v for v in rng.permutation(self.data.n_users) if v != user and len(self.data.train_sequence(int(v))) >= 3]
        blocks = []
        for v in pool[: self.num_demos]:
            seq = self.data.train_sequence(int(v))
            history, answer = self.history_lines(seq[:-1]), self.texts[int(seq[-1])]
            if kind == "pointwise":
                blocks.append(self._fill("pointwise", history=history, candidate=answer, demos="") + " Yes")
            elif kind == "likelihood":
                blocks.append(self._fill("likelihood", history=history, demos="") + f" {answer}")
            else:
                blocks.append(f"(Example) A user's {self.noun}s, most recent last:\n{history}\nNext: {answer}")
        return "\n\n".join(blocks) + "\n\n"

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
    def pointwise(self, user: int, split: str, item: int) -> str:
        history = self.history_lines(self.data.history(user, split))
        return self.wrap(self._fill("pointwise", history=history, candidate=self.texts[int(item)],
                                    demos=self.demos(user, "pointwise")))

    def likelihood(self, user: int, split: str, items) -> tuple[str, list[str]]:
        history = self.history_lines(self.data.history(user, split))
        prompt = self.wrap(self._fill("likelihood", history=history, demos=self.demos(user, "likelihood")))
        return prompt, [self.answer_prefix + self.texts[int(i)] for i in items]

    def listwise(self, user: int, split: str, items) -> str:
        history = self.history_lines(self.data.history(user, split))
        return self.wrap(self._fill("listwise", history=history, candidates=self.candidate_block(items),
                                    demos=self.demos(user, "listwise")))
