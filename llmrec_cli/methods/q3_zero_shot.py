"""Quadrant 3, `zero_shot`: a frozen LLM scores the shared candidates from a prompt of the user's history.

`method.scoring`:
- `pointwise`: log-odds logit(Yes) - logit(No) for "Will the user like X?" (TALLRec's question, no tuning);
  its sigmoid is P(Yes) / (P(Yes) + P(No)) (`score_kind` "logit");
- `likelihood`: length-normalised log-probability of each candidate's text after "The next movie is:";
- `listwise`: candidates listed with letters A, B, ...; one forward pass per user scores all of them from
  the letter logits at the answer position (LlamaRec's verbalizer). Order-sensitive: the evaluator shows the
  candidates in `eval.permutations` seeded orders and averages.
- `generate` (LLMRank): the model writes the candidates' letters ranked, best first (`method.reasoning=cot`:
  after thinking step by step, on its last line); the answer is parsed by `llm.answers.parse_ranking` (letters,
  numbers or titles, fuzzy), unranked candidates rank last in a seeded order, and every run logs the answers'
  validity (`answers/valid_answer_rate`, `duplicate_rate`, `out_of_candidates_rate`, `mean_candidates_ranked`,
  `complete_rate`) and a sample of raw answers (`answers/samples.jsonl`). Order-sensitive, like listwise.
With `model=endpoint` every mode but `likelihood` goes through an OpenAI-compatible server (llm/endpoint.py):
pointwise and listwise read the answer token's top log-probabilities, where the server returns them.
`method.num_demos` adds few-shot demonstrations built from other users' training data. Prompts are fitted into
`model.max_length` by dropping whole demonstrations, then whole oldest history lines (`prompt/*` metrics).
"""
from __future__ import annotations

import json

import numpy as np

from llmrec_cli.errors import ConfigError
from llmrec_cli.llm.prompts import LETTERS, TEMPLATES, PromptBuilder
from llmrec_cli.methods.configs import ZeroShotConfig
from llmrec_cli.methods.llm_base import LLMMethod, stack
from llmrec_cli.registry import register_method


@register_method("zero_shot", quadrant="3", schema=ZeroShotConfig)
class ZeroShot(LLMMethod):
    supports_full = False  # one LLM call per user x item over the whole catalogue is not affordable

    def setup(self, data) -> None:
        self.data = data
        cfg = self.cfg
        if cfg.scoring not in SCORINGS:
            raise ConfigError(f"method.scoring={cfg.scoring} is not one of {', '.join(SCORINGS)}")
        if cfg.get("reasoning", "none") not in ("none", "cot"):
            raise ConfigError(f"method.reasoning={cfg.reasoning} is not one of none, cot")
        if cfg.get("reasoning", "none") == "cot" and cfg.scoring != "generate":
            raise ConfigError("method.reasoning=cot needs method.scoring=generate (the ranking is read from the "
                              "end of the reasoning)")
        self.setup_llm()
        self.answers: list = []  # generate: (user, candidates, answer, parse) of every prompt, for validity
        self.prompts = PromptBuilder(data, self.tokenizer, noun=self.ctx.cfg.dataset.item_noun,
                                     max_history=int(cfg.max_history), history_tokens=int(cfg.history_tokens),
                                     use_chat_template=bool(cfg.use_chat_template), num_demos=int(cfg.num_demos),
                                     seed=self.ctx.seed, max_length=int(self.ctx.cfg.model.max_length),
                                     item_text=str(cfg.item_text))
        self.score_kind = "logit" if cfg.scoring == "pointwise" else "score"
        self.order_sensitive = cfg.scoring in ("listwise", "generate")
        self._log_prompting()

    @property
    def cot(self) -> bool:
        return self.cfg.get("reasoning", "none") == "cot"

    def _log_prompting(self) -> None:
        kind = self.cfg.scoring
        template = "generate_cot" if kind == "generate" and self.cot else kind
        self.ctx.log_text(TEMPLATES[template], f"prompts/template_{template}.txt")
        u = next((v for v in range(self.data.n_users) if len(self.data.train_sequence(v)) >= 4), 0)
        seq = self.data.train_sequence(u)
        history, items = seq[:-3], seq[-3:]
        endpoint = self.endpoint is not None  # no token ids there: the verbalizer is matched by its text
        if kind == "pointwise":
            example = self.prompts.pointwise(u, history, int(items[0]))
            if endpoint:
                self.ctx.log_params({"verbalizer.words": "Yes,No"})
            else:
                ids = self.scorer.verbalizer_ids(["Yes", "No"], prefix=self.prompts.answer_prefix)
                self.ctx.log_params({"verbalizer.yes_token_id": ids[0], "verbalizer.no_token_id": ids[1]})
        elif kind == "listwise":
            example = self.prompts.listwise(u, history, items)
            letters = LETTERS[: self.ctx.cfg.eval.num_negatives + 1]
            if endpoint:
                self.ctx.log_params({"verbalizer.words": ",".join(letters)})
            else:
                ids = self.scorer.verbalizer_ids(letters, prefix=self.prompts.answer_prefix)
                self.ctx.log_params({"verbalizer.index_token_ids": json.dumps(ids)})
        elif kind == "generate":
            example = self.prompts.generate(u, history, items, cot=self.cot)
            self.ctx.log_params({"generate.max_new_tokens": self.max_new_tokens, "generate.reasoning":
                                 self.cfg.get("reasoning", "none")})
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
        if kind == "generate":
            return self.timed(lambda: self._generate(users, histories, items), len(users))
        raise ValueError(f"method.scoring={kind} is not one of {', '.join(SCORINGS)}")

    @property
    def max_new_tokens(self) -> int:
        if self.cfg.get("max_new_tokens"):
            return int(self.cfg.max_new_tokens)
        if self.endpoint is not None and not self.cot:
            return min(int(self.ctx.cfg.model.get("max_tokens", 64)), 64)
        return 512 if self.cot else 64

    def _generate(self, users, histories, items) -> np.ndarray:
        from llmrec_cli.llm.answers import parse_ranking, ranking_scores

        budget = self.max_new_tokens
        prompts = [self.prompts.generate(int(u), h, row, cot=self.cot, reserve=budget)
                   for u, h, row in zip(users, histories, items, strict=True)]
        if self.endpoint is not None:
            texts = [a["text"] for a in self.scorer.generate(prompts, budget)]
        else:
            from llmrec_cli.llm.generation import generate

            texts = generate(self.loaded.model, self.tokenizer, prompts, budget, batch_size=int(self.cfg.batch_size),
                             max_length=int(self.ctx.cfg.model.max_length))
        out = np.empty(items.shape, dtype=np.float64)
        for r, (u, row, text, prompt) in enumerate(zip(users, items, texts, prompts, strict=True)):
            titles = [self.prompts.texts[int(i)] for i in row]
            parsed = parse_ranking(text, len(row), titles)
            rng = np.random.default_rng([self.ctx.seed, int(u), *map(int, row)])  # a candidate set's own order
            out[r] = ranking_scores(parsed, len(row), rng)
            kept = prompt if len(self.answers) < SAMPLED_ANSWERS else None  # only the sample logs prompts
            self.answers.append((int(u), [int(i) for i in row], text, parsed, kept))
        return out

    def cost_summary(self) -> dict[str, float]:
        """The LLM cost figures, plus for `generate` the answers' validity rates (and their sample as
        `answers/samples.jsonl`, the first 50 prompts and raw answers with their parse)."""
        out = super().cost_summary()
        if self.answers:
            from llmrec_cli.llm.answers import validity

            n = len(self.answers[0][1])
            out.update({f"answers/{k}": v for k, v in validity([a[3] for a in self.answers], n).items()})
            out["answers/count"] = float(len(self.answers))
            sample = [{"user": u, "candidates": c, "prompt": q, "answer": t, "parsed_order": p.order, "how": p.how,
                       "duplicates": p.duplicates, "out_of_candidates": p.out_of_candidates}
                      for u, c, t, p, q in self.answers[:SAMPLED_ANSWERS]]
            self.ctx.log_text("\n".join(json.dumps(s) for s in sample) + "\n", "answers/samples.jsonl")
        return out


SCORINGS = ("pointwise", "likelihood", "listwise", "generate")
SAMPLED_ANSWERS = 50  # raw answers (with their prompts) logged to answers/samples.jsonl
