"""Quadrant 4, `listwise_lora`: LoRA tuning of the listwise letter verbalizer (LlamaRec-style reranker), no CRM.

The tuned-LLM recipe (`llmrec_cli/methods/llm_tuned.py`) with the listwise head and items as titles. Training
samples come from the training view only (`llmrec_cli/methods/samples.py`): for each target (a user's last
training item, or with `method.samples_per_user` earlier positions too) the history is the training sequence
before it, and the candidates are the target plus `eval.num_negatives` negatives (`method.train_negatives`:
unseen items, or the CRM's top items as LlamaRec trains on its retriever's), shuffled and labelled A, B, C, ...
(the same number of candidates as the sampled protocol). At scoring time the candidates are shown in seeded
orders (`eval.permutations`; order sensitive), never in the plan's or a pre-filter's order.

Loss: cross-entropy over the candidate letters only, at the one answer position (the softmax is restricted to
the letter tokens). That is exactly the distribution `Scorer.listwise` reads at scoring time (log-softmax over
the letter logits), so training and scoring agree and no probability mass is spent on other tokens.
"""
from __future__ import annotations

from llmrec_cli.methods.configs import ListwiseLoraConfig
from llmrec_cli.methods.heads import ListwiseHead
from llmrec_cli.methods.llm_tuned import TitleItems, TunedLLM
from llmrec_cli.registry import register_method


@register_method("listwise_lora", quadrant="4", schema=ListwiseLoraConfig)
def listwise_lora(cfg, ctx) -> TunedLLM:
    return TunedLLM(cfg, ctx, head=ListwiseHead(), items=TitleItems())
