"""Quadrant 4, `listwise_lora`: LoRA tuning of the listwise letter verbalizer (LlamaRec-style reranker), no CRM.

Training samples come from the training view only (`llmrec_cli/methods/samples.py`): for each target (a
user's last training item, or with `method.samples_per_user` earlier positions too) the history is the training
sequence before it, and the candidates are the target plus `eval.num_negatives` negatives
(`method.train_negatives`: unseen items, or the CRM's top items as LlamaRec trains on its retriever's),
shuffled and labelled A, B, C, ... (the same number of candidates as the sampled protocol). The answer is the true item's letter. At scoring time the
candidates are shown in seeded orders (`eval.permutations`; `order_sensitive`), never in the plan's or a
pre-filter's order.

Loss: cross-entropy over the candidate letters only, at the one answer position (the softmax is restricted to
the letter tokens). That is exactly the distribution `Scorer.listwise` reads at scoring time (log-softmax
over the letter logits), so training and scoring agree and no probability mass is spent on other tokens.
`method.num_samples` keeps a seeded subset of the users' samples.
"""
from __future__ import annotations

import functools
import json

import numpy as np

from llmrec_cli.llm.prompts import LETTERS
from llmrec_cli.methods.configs import ListwiseLoraConfig
from llmrec_cli.methods.llm_base import stack
from llmrec_cli.methods.llm_tuned import TunedLLMMethod
from llmrec_cli.methods.samples import Sample
from llmrec_cli.registry import register_method


@register_method("listwise_lora", quadrant="4", schema=ListwiseLoraConfig)
class ListwiseLora(TunedLLMMethod):
    score_kind = "score"
    kind = "listwise"
    order_sensitive = True

    @property
    def num_candidates(self) -> int:
        return int(self.ctx.cfg.eval.num_negatives) + 1

    def check_config(self) -> None:
        super().check_config()
        if self.num_candidates > len(LETTERS):
            from llmrec_cli.errors import ConfigError

            raise ConfigError(f"method={self.cfg.name} labels at most {len(LETTERS)} candidates (letters A-Z), but "
                              f"eval.num_negatives={self.num_candidates - 1}: use eval.num_negatives<=25")

    def letter_ids(self) -> list[int]:
        return self.scorer.verbalizer_ids(LETTERS[: self.num_candidates], prefix=self.prompts.answer_prefix)

    @functools.cached_property
    def choices(self) -> tuple[int, ...]:
        """The letter tokens the training softmax runs over (those Scorer.listwise reads)."""
        return tuple(self.letter_ids())

    def target_samples(self, targets, negatives, rng: np.random.Generator) -> list[Sample]:
        """Per target: its item and `eval.num_negatives` negatives, shuffled; the answer is the item's letter."""
        out = []
        for t, neg in zip(targets, negatives(targets, self.num_candidates - 1), strict=True):
            seq = self.data.train_sequence(t.user)
            cands = np.asarray([int(seq[t.pos]), *neg], dtype=np.int64)
            order = rng.permutation(len(cands))
            out.append(Sample("next", t.user, seq[: t.pos], cands[order], int(np.flatnonzero(order == 0)[0])))
        return out

    def render_target(self, sample: Sample):
        from llmrec_cli.llm.training import Example

        prompt = self.make_prompt(sample.user, sample.history, candidates=self.prompts.candidate_block(sample.items))
        return Example(prompt, self.prompts.answer_prefix + LETTERS[sample.answer],
                       choices=self.choices[: len(sample.items)])

    def verbalizer_params(self) -> dict:
        return {"verbalizer.index_token_ids": json.dumps(self.letter_ids())}

    def example_prompt(self) -> str:
        u, history, cands = self.example_user()
        return self.show(self.make_prompt(u, history, candidates=self.prompts.candidate_block(cands)))

    def score(self, users, histories, items):
        prompts = [self.make_prompt(int(u), history, candidates=self.prompts.candidate_block(row))
                   for u, history, row in zip(users, histories, items, strict=True)]
        labels = LETTERS[: items.shape[1]]
        out = self.timed(lambda: self.scorer.listwise(prompts, [items.shape[1]] * len(users), labels=labels,
                                                      prefix=self.prompts.answer_prefix), len(users))
        return stack(out)
