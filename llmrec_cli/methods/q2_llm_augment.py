"""Quadrant 2, `llm_augment`: the frozen LLM writes knowledge profiles that feed a CRM (KAR style).

Feature -> config key:
- item profiles: the causal LM (`model=`, `llm_kind: causal`) answers `ITEM_TEMPLATE` for each item's text,
  greedy, batched (`method.batch_size`), left padded, `method.max_new_tokens` new tokens, wrapped in the
  tokenizer's chat template when it has one (`method.use_chat_template`); `{noun}` is `dataset.item_noun`
- user profiles (`method.user_profiles=true`): `USER_TEMPLATE` over the user's last `method.max_history`
  TRAINING items (`data.train_sequence`, never valid/test targets; `method.history_tokens` budget)
- generation cache: `$LLMREC_CACHE_DIR/augment/<model>-<key>.jsonl`, key = hash of (model name, name_or_path,
  max_new_tokens, both templates), lines keyed by the prompt's hash, appended batch by batch, so a killed run
  resumes where it stopped and another model/prompt/length never reuses them
- the profiles ("<item text>. <generated knowledge>"; users: the generated text) are embedded by the same
  backbone (`model.pooling`, mean by default) and enter the CRM exactly as in `llm_encoder` (`method.mode`,
  `method.adapter`, `method.fuse_id`, `method.whiten`, `crm.from_run`: this class extends `LLMEncoder`)
- user profile vectors: linear(user vector), zero at the start, added to the CRM's user representation
  (SASRec: every position's hidden state, so the last one at inference; BPR: the user embedding)
- logged: `augment/prompt_templates.txt`, `augment/samples.txt` (`method.log_samples` generations), costs
  `cost/generate_seconds`, `cost/generated_tokens`, `cost/generated_prompts`, `cost/generation_cache_hits`
"""
from __future__ import annotations

import hashlib

import numpy as np

from llmrec_cli.llm.generation import GenerationCache, GenerationStats, iter_generate
from llmrec_cli.llm.prompts import PromptBuilder
from llmrec_cli.methods.configs import LLMAugmentConfig
from llmrec_cli.methods.q2_llm_encoder import LLMEncoder
from llmrec_cli.registry import register_method
from llmrec_cli.utils.io import cache_dir
from llmrec_cli.utils.progress import progress_bar

ITEM_TEMPLATE = ('Introduce the {noun} "{item}" and describe its attributes precisely: genre, themes, mood, '
                 "style, and the audience who would enjoy it.")
USER_TEMPLATE = ("A user has {verbed} these {nouns}, most recent last:\n{history}\n"
                 "Analyze the user's preferences on {nouns} (genre, themes, mood, style) in a few sentences.")


@register_method("llm_augment", quadrant="2", schema=LLMAugmentConfig)
class LLMAugment(LLMEncoder):
    prefix = "llm_augment"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.stats = GenerationStats()
        self._cache_hits = 0
        self._samples: list[str] = []
        self.prompts: PromptBuilder | None = None

    # ---- prompts -----------------------------------------------------------------------------------------
    def _fill(self, template: str, **fields) -> str:
        noun = str(self.ctx.cfg.dataset.item_noun)
        verbed = "watched" if noun == "movie" else "chosen"
        return template.format(noun=noun, nouns=noun + "s", verbed=verbed, **fields)

    def item_prompt(self, item: int) -> str:
        return self.prompts.wrap(self._fill(ITEM_TEMPLATE, item=self.prompts.texts[item]))

    def user_history(self, user: int) -> np.ndarray:
        """The items shown in USER's profile prompt: the end of the training sequence only."""
        return self.data.train_sequence(user)[-int(self.cfg.max_history):]

    def user_prompt(self, user: int) -> str:
        lines = self.prompts.history_lines(self.user_history(user))
        return self.prompts.wrap(self._fill(USER_TEMPLATE, history="\n".join(lines)))

    # ---- generation --------------------------------------------------------------------------------------
    def cache_path(self):
        model = self.ctx.cfg.model
        parts = [model.name, str(model.name_or_path), str(self.cfg.max_new_tokens), ITEM_TEMPLATE, USER_TEMPLATE]
        key = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
        return cache_dir() / "augment" / f"{model.name}-{key}.jsonl"

    def generate(self, prompts: list[str], labels: list[str]) -> list[str]:
        """Generated text per prompt: from the cache, the rest generated and appended batch by batch."""
        cache = GenerationCache(self.cache_path())
        todo = [i for i, p in enumerate(prompts) if cache.get(p) is None]
        self._cache_hits += len(prompts) - len(todo)
        if todo:
            self.ensure_llm()
            tok = self.loaded.tokenizer
            batches = iter_generate(self.loaded.model, tok, [prompts[i] for i in todo],
                                    int(self.cfg.max_new_tokens), int(self.cfg.batch_size),
                                    int(self.ctx.cfg.model.max_length), add_special_tokens=True,
                                    stats=self.stats)
            n_batches = -(-len(todo) // max(1, int(self.cfg.batch_size)))
            for batch in progress_bar(batches, desc="generate", enabled=self.ctx.progress, total=n_batches):
                cache.add([(prompts[todo[j]], labels[todo[j]], text) for j, text in batch])
        return [cache.get(p) for p in prompts]

    # ---- profiles ----------------------------------------------------------------------------------------
    def _setup_prompts(self, data) -> None:
        if self.prompts is None:
            self.ensure_llm()  # the tokenizer: chat template and the history token budget
            self.prompts = PromptBuilder(data, self.loaded.tokenizer, noun=str(self.ctx.cfg.dataset.item_noun),
                                         max_history=int(self.cfg.max_history),
                                         history_tokens=int(self.cfg.history_tokens),
                                         use_chat_template=bool(self.cfg.use_chat_template))
            self.ctx.log_text(f"# item\n{ITEM_TEMPLATE}\n\n# user\n{USER_TEMPLATE}\n\n# chat template: "
                              f"{self.prompts.chat}\n", "augment/prompt_templates.txt")

    def item_profiles(self, data) -> np.ndarray:
        self._setup_prompts(data)
        items = range(1, data.n_items + 1)
        texts = self.prompts.texts
        knowledge = self.generate([self.item_prompt(i) for i in items], [f"item:{data.item_ids[i]}" for i in items])
        profiles = [""] + [f"{texts[i]}. {k}" for i, k in zip(items, knowledge, strict=True)]
        self._sample("item", [texts[i] for i in items], knowledge)
        return self.embed_texts(profiles, "item")

    def user_profiles(self, data) -> np.ndarray | None:
        if not self.cfg.user_profiles:
            return None
        self._setup_prompts(data)
        users = range(data.n_users)
        prompts = [self.user_prompt(u) for u in users]
        profiles = self.generate(prompts, [f"user:{data.user_ids[u]}" for u in users])
        self._sample("user", prompts, profiles)
        return self.embed_texts(["", *profiles], "user")[1:]

    def fit(self, data):
        self.data = data
        summary = super().fit(data)
        self.ctx.log_text("\n\n".join(self._samples) + "\n", "augment/samples.txt")
        return summary

    def _sample(self, kind: str, inputs: list[str], outputs: list[str]) -> None:
        for text, out in list(zip(inputs, outputs, strict=True))[: int(self.cfg.log_samples)]:
            self._samples.append(f"### {kind}: {text}\n{out}")

    def cost_summary(self) -> dict[str, float]:
        return {**super().cost_summary(), "cost/generate_seconds": self.stats.seconds,
                "cost/generated_tokens": float(self.stats.new_tokens),
                "cost/generated_prompts": float(self.stats.prompts),
                "cost/generation_cache_hits": float(self._cache_hits)}
