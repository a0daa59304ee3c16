"""Quadrant 4, `tallrec`: LoRA instruction tuning of the LLM on Yes/No questions (TALLRec), no CRM.

Training samples come from the training view only. For each user with at least two training interactions the
history is their training sequence without its last item; that last item is asked about and answered " Yes",
and `method.negatives_per_user` items outside the user's training sequence are asked about and answered " No".
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
from llmrec_cli.methods.llm_tuned import TunedLLMMethod, training_negatives
from llmrec_cli.registry import register_method


@register_method("tallrec", quadrant="4", schema=TallRecConfig)
class TallRec(TunedLLMMethod):
    score_kind = "logit"
    kind = "pointwise"

    def training_samples(self, data, rng: np.random.Generator) -> list[tuple]:
        """(user, history length, item, answer) per sample; the history is the train sequence's first items."""
        threshold = self.ctx.cfg.eval.like_threshold
        samples = []
        for u in range(data.n_users):
            seq = data.train_sequence(u)
            if len(seq) < 2:
                continue
            pos = int(seq[-1])
            like = True
            if self.cfg.use_ratings and threshold is not None:
                rating = data.train_ratings(u)[-1]
                like = bool(np.isnan(rating) or rating >= threshold)
            samples.append((u, len(seq) - 1, pos, "Yes" if like else "No"))
            for neg in training_negatives(data, u, rng, int(self.cfg.negatives_per_user)):
                samples.append((u, len(seq) - 1, neg, "No"))
        return samples

    def render(self, sample: tuple):
        from llmrec_cli.llm.training import Example

        u, n_history, item, answer = sample
        history = self.data.train_sequence(u)[:n_history]
        prompt = self.make_prompt(u, history, candidate=self.prompts.texts[item])
        return Example(prompt, self.prompts.answer_prefix + answer)

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
