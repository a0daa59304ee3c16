"""Quadrant 4, `tallrec`: LoRA instruction tuning of the LLM on Yes/No questions (TALLRec), no CRM.

Training samples come from the training view only (`llmrec_cli/methods/samples.py`). For each target (a user's
last training item, or with `method.samples_per_user` earlier positions too) the history is the training
sequence before it; the target item is asked about and answered " Yes", and `method.negatives_per_user`
negatives (`method.train_negatives`: unseen items, or the CRM's top items) are asked about and answered " No".
Labels are implicit feedback by default (every interaction is a like), which matches the sampled ranking
protocol; `method.use_ratings=true` answers the positive " No" when its rating is below `eval.like_threshold`
(TALLRec's explicit-feedback labels, matching the pointwise protocol's labels). `method.num_samples` keeps a
seeded subset of the samples (TALLRec's few-shot setting: 16, 64, 256, ...).

Scoring is `Scorer.pointwise` on the tuned model: the log-odds logit(Yes) - logit(No) at the answer position
(its sigmoid is P(Yes) / (P(Yes) + P(No)); ranking on it never saturates), with the same prompt text
(`prompts/template_pointwise.txt`) and verbalizer tokens as training.
"""
from __future__ import annotations

import numpy as np

from llmrec_cli.methods.configs import TallRecConfig
from llmrec_cli.methods.llm_tuned import TunedLLMMethod
from llmrec_cli.methods.samples import Sample
from llmrec_cli.registry import register_method


@register_method("tallrec", quadrant="4", schema=TallRecConfig)
class TallRec(TunedLLMMethod):
    score_kind = "logit"
    kind = "pointwise"

    def prompts_per_target(self) -> int:
        return 1 + int(self.cfg.negatives_per_user)

    def target_samples(self, targets, negatives, rng: np.random.Generator) -> list[Sample]:
        """Per target: its item (answer Yes, or by rating with `method.use_ratings`) and
        `method.negatives_per_user` negatives (answer No), each with the target's history."""
        threshold = self.ctx.cfg.eval.like_threshold
        out = []
        negs = negatives(targets, int(self.cfg.negatives_per_user))
        for t, neg in zip(targets, negs, strict=True):
            seq = self.data.train_sequence(t.user)
            like = True
            if self.cfg.use_ratings and threshold is not None:
                rating = self.data.train_ratings(t.user)[t.pos]
                like = bool(np.isnan(rating) or rating >= threshold)
            history = seq[: t.pos]
            out.append(Sample("next", t.user, history, np.asarray([int(seq[t.pos])]), int(like)))
            out += [Sample("next", t.user, history, np.asarray([int(n)]), 0) for n in neg]
        return out

    def render_target(self, sample: Sample):
        from llmrec_cli.llm.training import Example

        prompt = self.make_prompt(sample.user, sample.history, candidate=self.prompts.texts[int(sample.items[0])])
        return Example(prompt, self.prompts.answer_prefix + ("Yes" if sample.answer else "No"))

    def verbalizer_params(self) -> dict:
        yes, no = self.scorer.verbalizer_ids(["Yes", "No"], prefix=self.prompts.answer_prefix)
        return {"verbalizer.yes_token_id": yes, "verbalizer.no_token_id": no}

    def example_prompt(self) -> str:
        u, history, cands = self.example_user()
        return self.show(self.make_prompt(u, history, candidate=self.prompts.texts[int(cands[0])]))

    def score(self, users, histories, items):
        prompts = []
        for u, history, row in zip(users, histories, items, strict=True):
            prompts += [self.make_prompt(int(u), history, candidate=self.prompts.texts[int(i)]) for i in row]
        odds = self.timed(lambda: self.scorer.pointwise(prompts, yes="Yes", no="No",
                                                        prefix=self.prompts.answer_prefix), len(users))
        return np.asarray(odds, dtype=np.float64).reshape(items.shape)
