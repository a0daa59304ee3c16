"""Quadrant 4, `tallrec`: LoRA instruction tuning of the LLM on Yes/No questions (TALLRec), no CRM.

The tuned-LLM recipe (`llmrec_cli/methods/llm_tuned.py`) with the pointwise head and items as titles. Training
samples come from the training view only (`llmrec_cli/methods/samples.py`): for each target (a user's last
training item, or with `method.samples_per_user` earlier positions too) the history is the training sequence
before it; the target is asked about and answered " Yes", and `method.negatives_per_user` negatives
(`method.train_negatives`: unseen items, or the CRM's top items) are answered " No". Labels are implicit
feedback by default (every interaction is a like), which matches the sampled ranking protocol;
`method.use_ratings=true` answers the positive " No" when its rating is below `eval.like_threshold` (TALLRec's
explicit-feedback labels, matching the `like` protocol). `method.num_samples` keeps a seeded subset of exactly
that many prompts (TALLRec's few-shot setting: 16, 64, 256, ...).

Scoring is `Scorer.pointwise` on the tuned model: the log-odds logit(Yes) - logit(No) at the answer position
(its sigmoid is P(Yes) / (P(Yes) + P(No)); ranking on it never saturates), with the same prompt text
(`prompts/template_pointwise.txt`) and verbalizer tokens as training.
"""
from __future__ import annotations

from llmrec_cli.methods.configs import TallRecConfig
from llmrec_cli.methods.heads import PointwiseHead
from llmrec_cli.methods.llm_tuned import TitleItems, TunedLLM
from llmrec_cli.registry import register_method


@register_method("tallrec", quadrant="4", schema=TallRecConfig)
def tallrec(cfg, ctx) -> TunedLLM:
    return TunedLLM(cfg, ctx, head=PointwiseHead(), items=TitleItems())
