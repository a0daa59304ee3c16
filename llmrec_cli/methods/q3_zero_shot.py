"""Quadrant 3, `zero_shot`: a frozen LLM scores the shared candidates from a prompt of the user's history.

`method.scoring`:
- `pointwise`: log-odds logit(Yes) - logit(No) for "Will the user like X?" (TALLRec's question, no tuning);
  its sigmoid is P(Yes) / (P(Yes) + P(No)) (`score_kind` "logit");
- `likelihood`: length-normalised log-probability of each candidate's text after "The next movie is:";
- `listwise`: candidates listed with letters A, B, ...; one forward pass per user scores all of them from
  the letter logits at the answer position (LlamaRec's verbalizer). Order-sensitive: the evaluator shows the
  candidates in `eval.permutations` seeded orders and averages.
`method.num_demos` adds few-shot demonstrations built from other users' training data. Prompts are fitted into
`model.max_length` by dropping whole demonstrations, then whole oldest history lines (`prompt/*` metrics).
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

    def setup(self, data) -> None:
        self.data = data
        self.setup_llm()
        cfg = self.cfg
        self.prompts = PromptBuilder(data, self.loaded.tokenizer, noun=self.ctx.cfg.dataset.item_noun,
                                     max_history=int(cfg.max_history), history_tokens=int(cfg.history_tokens),
                                     use_chat_template=bool(cfg.use_chat_template), num_demos=int(cfg.num_demos),
                                     seed=self.ctx.seed, max_length=int(self.ctx.cfg.model.max_length),
                                     item_text=str(cfg.item_text))
        self.score_kind = "logit" if cfg.scoring == "pointwise" else "score"
        self.order_sensitive = cfg.scoring == "listwise"
        self._log_prompting()

    def _log_prompting(self) -> None:
        kind = self.cfg.scoring
        self.ctx.log_text(TEMPLATES[kind], f"prompts/template_{kind}.txt")
        u = next((v for v in range(self.data.n_users) if len(self.data.train_sequence(v)) >= 4), 0)
        seq = self.data.train_sequence(u)
        history, items = seq[:-3], seq[-3:]
        if kind == "pointwise":
            example = self.prompts.pointwise(u, history, int(items[0]))
            ids = self.scorer.verbalizer_ids(["Yes", "No"], prefix=self.prompts.answer_prefix)
            self.ctx.log_params({"verbalizer.yes_token_id": ids[0], "verbalizer.no_token_id": ids[1]})
        elif kind == "listwise":
            example = self.prompts.listwise(u, history, items)
            ids = self.scorer.verbalizer_ids(LETTERS[: self.ctx.cfg.eval.num_negatives + 1],
                                             prefix=self.prompts.answer_prefix)
            self.ctx.log_params({"verbalizer.index_token_ids": json.dumps(ids)})
        else:
            prompt, cands = self.prompts.likelihood(u, history, items)
            example = prompt + "\n--- candidate continuations ---\n" + "\n".join(cands)
        self.ctx.log_text(example, "prompts/example.txt")
        self.ctx.log_params({"prompt.chat_template": self.prompts.chat, "prompt.answer_prefix": repr(self.prompts.answer_prefix)})

    def score(self, users, histories, items):
        kind = self.cfg.scoring
        rows = list(zip(users, histories, items, strict=True))
        if kind == "pointwise":
            prompts = [self.prompts.pointwise(int(u), h, int(i)) for u, h, row in rows for i in row]
            odds = self.timed(lambda: self.scorer.pointwise(prompts, yes="Yes", no="No",
                                                            prefix=self.prompts.answer_prefix), len(users))
            return np.asarray(odds, dtype=np.float64).reshape(items.shape)
        if kind == "likelihood":
            pairs = [self.prompts.likelihood(int(u), h, row) for u, h, row in rows]
            out = self.timed(lambda: self.scorer.likelihood([p for p, _ in pairs], [c for _, c in pairs]), len(users))
            return stack(out)
        if kind == "listwise":
            prompts = [self.prompts.listwise(int(u), h, row) for u, h, row in rows]
            labels = LETTERS[: items.shape[1]]
            out = self.timed(lambda: self.scorer.listwise(prompts, [items.shape[1]] * len(users), labels=labels,
                                                          prefix=self.prompts.answer_prefix), len(users))
            return stack(out)
        raise ValueError(f"method.scoring={kind} is not one of pointwise, likelihood, listwise")
