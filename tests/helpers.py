"""Small helpers shared by several test modules."""
from __future__ import annotations

METRIC = "valid/sampled/ndcg_10"


def crash_then_constant():
    """(a validator that raises at its second call, one that never does): a run killed after epoch 1, then resumed."""
    calls = {"n": 0}

    def crash_at_epoch_2(method):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return {METRIC: 0.5}

    def constant(method):
        return {METRIC: 0.5}

    return crash_at_epoch_2, constant
