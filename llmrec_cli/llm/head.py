"""The LM head as fp32 logits: one code path for scoring (`Scorer`) and training (the LoRA loop).

`LMHead(lm)(hidden, cols=None)` returns fp32 logits [..., k] of the vocabulary columns COLS (all, [..., V], when
None) from hidden states [..., H]. A plain linear head (`plain_linear`) is computed as
`hidden.float() @ W[cols].float().T (+ bias[cols])`: no rounding to the model's dtype (bf16 logits tie, and ties
rank a target low) and only k columns of work. The full-vocabulary product uses an fp32 copy of a non-fp32
weight, kept while the weight is unchanged (re-made when its storage or in-place version changes) and only when
the weight is frozen: a trainable head (full fine-tuning) is cast inside the graph so that it gets gradients.
Any other head (a peft-wrapped `lm_head` with LoRA or modules_to_save, a quantized or hooked layer) is called
as a module and its output cast to fp32: its logits keep the rounding of its dtype. The model's
`logit_scale` and `final_logit_softcapping` are applied after, as the model does.
"""
from __future__ import annotations

import torch


def plain_linear(module) -> bool:
    """Whether MODULE computes exactly `F.linear(x, weight, bias)` with a float weight we can read: an
    `nn.Linear` (or subclass) with nn.Linear's own forward, no hooks, no replaced forward (accelerate), a
    float weight that is not on the meta device. peft's LoRA layers, quantized layers and hooked heads are not."""
    if not isinstance(module, torch.nn.Linear) or type(module).forward is not torch.nn.Linear.forward:
        return False
    if "forward" in vars(module) or module._forward_hooks or module._forward_pre_hooks:
        return False
    weight = module.weight
    return weight.is_floating_point() and weight.device.type != "meta"


class LMHead:
    """fp32 logits of a causal LM's output layer (see the module docstring)."""

    def __init__(self, lm):
        self.lm = lm
        self.module = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
        config = getattr(lm, "config", None)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.logit_scale = getattr(config, "logit_scale", None)
        self._weight32: torch.Tensor | None = None
        self._weight32_key: tuple | None = None

    def __call__(self, hidden: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        module = self.module
        if module is None:
            raise TypeError(f"{type(self.lm).__name__} has no LM head: only embed() works with it")
        if plain_linear(module):
            weight, bias = module.weight, module.bias
            x = hidden.to(weight.device).float()
            if cols is None:
                logits = x @ self.fp32_weight(weight).T
            else:
                cols = cols.to(weight.device)
                logits = x @ weight[cols].float().T
            if bias is not None:
                logits = logits + (bias if cols is None else bias[cols]).float()
            logits = logits.to(hidden.device)
        else:
            logits = module(hidden).float()
            if cols is not None:
                logits = logits[..., cols.to(logits.device)]
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def fp32_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """WEIGHT in fp32: itself when it is fp32; cast in the graph when it is trainable; else a cached copy,
        re-made when WEIGHT's storage, in-place version, dtype or shape changed. Weights without a version counter
        (inference tensors) are copied on every call."""
        if weight.dtype == torch.float32:
            return weight
        if weight.requires_grad:
            return weight.float()
        try:
            key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape), weight.device)
        except RuntimeError:  # inference tensors track no version: never trust a cached copy of them
            return weight.detach().float()
        if self._weight32 is None or self._weight32_key != key:
            self._weight32 = None  # free the old copy before making the new one
            self._weight32 = weight.detach().float()
            self._weight32_key = key
        return self._weight32
