"""Quadrant 3, `zero_shot`: a frozen LLM scores the shared candidates from a prompt of the user's history.

`method.scoring`:
- `pointwise`: P(Yes) / (P(Yes) + P(No)) for "Will the user like X?" (TALLRec's question, no tuning);
- `likelihood`: length-normalised log-probability of each candidate's text after "The next movie is:";
- `listwise`: candidates listed with letters A, B, ...; one forward pass per user scores all of them from
  the letter logits at the answer position (LlamaRec's verbalizer).
`method.num_demos` adds few-shot demonstrations built from other users' training data.
"""
from __future__ import annotations

import json

import numpy as np

from llmrec_cli.llm.prompts import LETTERS, TEMPLATES, PromptBuilder
from llmrec_cli.methods.configs import ZeroShotConfig
from llmrec_cli.methods.llm_base import LLMMethod, stack
from llmrec_cli.registry import register_method


@register_method("zero_shot", quadrant="3", schema=ZeroShotConfig)
class ZeroShot(LLMMethod):
    supports_full = False  # one LLM call per user x item over the whole catalogue is not affordable

    def fit(self, data):
        self.data = data
        self.setup_llm()
        cfg = self.cfg
        self.prompts = PromptBuilder(data, self.loaded.tokenizer, noun=self.ctx.cfg.dataset.item_noun,
                                     max_history=int(cfg.max_history), history_tokens=int(cfg.history_tokens),
                                     use_chat_template=bool(cfg.use_chat_template), num_demos=int(cfg.num_demos),
                                     seed=self.ctx.seed)
        self.score_kind = "probability" if cfg.scoring == "pointwise" else "score"
        self._log_prompting()
        return {}

    def _log_prompting(self) -> None:
        kind = self.cfg.scoring
        self.ctx.log_text(TEMPLATES[kind], f"prompts/template_{kind}.txt")
        u = 0
        items = self.data.sequence(u)[-3:]
        if kind == "pointwise":
            example = self.prompts.pointwise(u, "valid", int(items[0]))
            ids = self.scorer.verbalizer_ids(["Yes", "No"], prefix=self.prompts.answer_prefix)
            self.ctx.log_params({"verbalizer.yes_token_id": ids[0], "verbalizer.no_token_id": ids[1]})
        elif kind == "listwise":
            example = self.prompts.listwise(u, "valid", items)
            ids = self.scorer.verbalizer_ids(LETTERS[: self.ctx.cfg.eval.num_negatives + 1],
                                             prefix=self.prompts.answer_prefix)
            self.ctx.log_params({"verbalizer.index_token_ids": json.dumps(ids)})
        else:
            prompt, cands = self.prompts.likelihood(u, "valid", items)
            example = prompt + "\n--- candidate continuations ---\n" + "\n".join(cands)
        self.ctx.log_text(example, "prompts/example.txt")
        self.ctx.log_params({"prompt.chat_template": self.prompts.chat, "prompt.answer_prefix": repr(self.prompts.answer_prefix)})

    def score(self, split, users, items):
        kind = self.cfg.scoring
        if kind == "pointwise":
            prompts = [self.prompts.pointwise(int(u), split, int(i)) for u, row in zip(users, items, strict=True)
                       for i in row]
            probs = self.timed(lambda: self.scorer.pointwise(prompts, yes="Yes", no="No",
                                                             prefix=self.prompts.answer_prefix), len(users))
            return np.asarray(probs, dtype=np.float64).reshape(items.shape)
        if kind == "likelihood":
            pairs = [self.prompts.likelihood(int(u), split, row) for u, row in zip(users, items, strict=True)]
            out = self.timed(lambda: self.scorer.likelihood([p for p, _ in pairs], [c for _, c in pairs]), len(users))
            return stack(out)
        if kind == "listwise":
            prompts = [self.prompts.listwise(int(u), split, row) for u, row in zip(users, items, strict=True)]
            labels = LETTERS[: items.shape[1]]
            out = self.timed(lambda: self.scorer.listwise(prompts, [items.shape[1]] * len(users), labels=labels,
                                                          prefix=self.prompts.answer_prefix), len(users))
            return stack(out)
        raise ValueError(f"method.scoring={kind} is not one of pointwise, likelihood, listwise")
