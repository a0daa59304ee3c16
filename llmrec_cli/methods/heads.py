"""Heads of the tuned LLM recipe (`llmrec_cli.methods.llm_tuned.TunedLLM`): what the LLM answers, how its training
samples are made and how its answer scores the candidates. Both read the answer position with the shared fp32
LM head (`llmrec_cli.llm.head.LMHead`), at training and at scoring time.

- `PointwiseHead` (TALLRec): "Will the user like X?" answered " Yes" / " No". Per training target its item is
  a "Yes" (or by rating with `method.use_ratings`) and `method.negatives_per_user` negatives are "No"s. Scores
  are the log-odds logit(Yes) - logit(No) (`score_kind = "logit"`; its sigmoid is P(Yes) / (P(Yes) + P(No))).
- `ListwiseHead` (LlamaRec): the candidates labelled A, B, C, ...; the answer is the target's letter, the training
  softmax restricted to the letters (exactly the distribution `Scorer.listwise` reads). Per training target:
  the target among `eval.num_negatives` negatives, shuffled. Order sensitive: at scoring time the candidates
  are shown in seeded orders, never in the plan's or a pre-filter's order.
"""
from __future__ import annotations

import json

import numpy as np

from llmrec_cli.errors import ConfigError
from llmrec_cli.llm.prompts import LETTERS
from llmrec_cli.methods.samples import Sample


def letter_ids(m, n: int) -> tuple[int, ...]:
    """The token ids of the first N candidate letters after the answer prefix (listwise head and aux tasks)."""
    return tuple(m.scorer.verbalizer_ids(LETTERS[:n], prefix=m.prompts.answer_prefix))


class PointwiseHead:
    name = "pointwise"
    kind = "pointwise"  # the prompt template (llmrec_cli/llm/prompts.py)
    score_kind = "logit"
    order_sensitive = False

    def check(self, m) -> None:
        if int(m.cfg.get("negatives_per_user", 1)) < 0:
            raise ConfigError(f"method.negatives_per_user={m.cfg.negatives_per_user} must be >= 0")

    def prompts_per_target(self, m) -> int:
        return 1 + int(m.cfg.negatives_per_user)

    def target_samples(self, m, targets, negatives, rng: np.random.Generator) -> list[Sample]:
        threshold = m.ctx.cfg.eval.like_threshold
        out = []
        for t, neg in zip(targets, negatives(targets, int(m.cfg.negatives_per_user)), strict=True):
            seq = m.data.train_sequence(t.user)
            like = True
            if m.cfg.use_ratings and threshold is not None:
                rating = m.data.train_ratings(t.user)[t.pos]
                like = bool(np.isnan(rating) or rating >= threshold)
            history = seq[: t.pos]
            out.append(Sample("next", t.user, history, np.asarray([int(seq[t.pos])]), int(like)))
            out += [Sample("next", t.user, history, np.asarray([int(n)]), 0) for n in neg]
        return out

    def render(self, m, sample: Sample):
        from llmrec_cli.llm.training import Example

        prompt = m.make_prompt(sample.user, sample.history, candidate=m.prompts.texts[int(sample.items[0])])
        return Example(prompt, m.prompts.answer_prefix + ("Yes" if sample.answer else "No"))

    def fields(self, m, items) -> dict:
        return {"candidate": m.prompts.texts[int(items[0])]}

    def verbalizer_params(self, m) -> dict:
        yes, no = m.scorer.verbalizer_ids(["Yes", "No"], prefix=m.prompts.answer_prefix)
        return {"verbalizer.yes_token_id": yes, "verbalizer.no_token_id": no}

    def score(self, m, users, histories, items) -> np.ndarray:
        prompts = []
        for u, history, row in zip(users, histories, items, strict=True):
            prompts += [m.make_prompt(int(u), history, candidate=m.prompts.texts[int(i)]) for i in row]
        odds = m.timed(lambda: m.scorer.pointwise(prompts, yes="Yes", no="No", prefix=m.prompts.answer_prefix),
                       len(users))
        return np.asarray(odds, dtype=np.float64).reshape(items.shape)


class ListwiseHead:
    name = "listwise"
    kind = "listwise"
    score_kind = "score"
    order_sensitive = True

    def num_candidates(self, m) -> int:
        return int(m.ctx.cfg.eval.num_negatives) + 1

    def check(self, m) -> None:
        if self.num_candidates(m) > len(LETTERS):
            raise ConfigError(f"method={m.cfg.name} labels at most {len(LETTERS)} candidates (letters A-Z), but "
                              f"eval.num_negatives={self.num_candidates(m) - 1}: use eval.num_negatives<=25")

    def prompts_per_target(self, m) -> int:
        return 1

    def target_samples(self, m, targets, negatives, rng: np.random.Generator) -> list[Sample]:
        out = []
        for t, neg in zip(targets, negatives(targets, self.num_candidates(m) - 1), strict=True):
            seq = m.data.train_sequence(t.user)
            cands = np.asarray([int(seq[t.pos]), *neg], dtype=np.int64)
            order = rng.permutation(len(cands))
            out.append(Sample("next", t.user, seq[: t.pos], cands[order], int(np.flatnonzero(order == 0)[0])))
        return out

    def render(self, m, sample: Sample):
        from llmrec_cli.llm.training import Example

        prompt = m.make_prompt(sample.user, sample.history, candidates=m.prompts.candidate_block(sample.items))
        return Example(prompt, m.prompts.answer_prefix + LETTERS[sample.answer],
                       choices=letter_ids(m, len(sample.items)))

    def fields(self, m, items) -> dict:
        return {"candidates": m.prompts.candidate_block(items)}

    def verbalizer_params(self, m) -> dict:
        return {"verbalizer.index_token_ids": json.dumps(list(letter_ids(m, self.num_candidates(m))))}

    def score(self, m, users, histories, items) -> np.ndarray:
        prompts = [m.make_prompt(int(u), history, candidates=m.prompts.candidate_block(row))
                   for u, history, row in zip(users, histories, items, strict=True)]
        labels = LETTERS[: items.shape[1]]
        out = m.timed(lambda: m.scorer.listwise(prompts, [items.shape[1]] * len(users), labels=labels,
                                                prefix=m.prompts.answer_prefix), len(users))
        return np.stack([np.asarray(r, dtype=np.float64) for r in out]) if out else np.zeros((0, 0))


HEADS = {"pointwise": PointwiseHead, "listwise": ListwiseHead}
