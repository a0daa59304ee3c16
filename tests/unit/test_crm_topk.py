"""candidates=crm_topk: the LLM reorders the CRM's top k, the CRM's order holds below (filter-then-rerank)."""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

from llmrec_cli.eval import metrics as M
from llmrec_cli.methods.base import RunContext
from llmrec_cli.methods.llm_base import LLMMethod


class FakeCRM:
    """Item i scores -i (item 1 best), ignoring the user; history items excluded from topk."""

    def __init__(self, n_items):
        self.n_items = n_items

    def score(self, users, histories, items):
        return -torch.arange(self.n_items + 1, dtype=torch.float32).repeat(len(users), 1)

    def topk(self, users, histories, k):
        out = []
        for h in histories:
            ranked = [i for i in range(1, self.n_items + 1) if i not in set(np.asarray(h).tolist())]
            out.append(ranked[:k])
        return np.asarray(out)


class FakeData:
    n_items = 10

    def history(self, u, split):
        return np.array([2]) if u == 0 else np.array([], dtype=np.int64)


class ReverseLLM(LLMMethod):
    """An 'LLM' that prefers higher item ids: the reverse of the CRM."""

    def score(self, split, users, items):
        self.seen = items.copy()
        return items.astype(np.float64)


def make(k):
    cfg = OmegaConf.create({"candidates": {"source": "crm_topk", "k": k}})
    m = ReverseLLM(OmegaConf.create({}), RunContext(cfg=cfg, seed=0, device="cpu", output_dir=None))
    m.data, m.prefilter = FakeData(), FakeCRM(10)
    return m


def test_llm_reorders_the_top_k_and_the_crm_order_holds_below():
    m = make(k=3)
    scores = m.score_full("test", np.array([0, 1]))
    assert scores.shape == (2, 11)
    # user 0 has item 2 in its history: the CRM's top 3 are 1, 3, 4 -> the LLM prefers 4, 3, 1
    assert m.seen.tolist() == [[1, 3, 4], [1, 2, 3]]
    order0 = [i for i in np.argsort(-scores[0], kind="stable") if i not in (0, 2)]
    assert order0[:3] == [4, 3, 1] and order0[3:] == [5, 6, 7, 8, 9, 10]
    order1 = [i for i in np.argsort(-scores[1], kind="stable") if i != 0]
    assert order1 == [3, 2, 1, 4, 5, 6, 7, 8, 9, 10]


def test_a_target_outside_the_top_k_keeps_its_crm_rank():
    m = make(k=3)
    scores = m.score_full("test", np.array([1]))
    valid = np.ones_like(scores, dtype=bool)
    valid[:, 0] = False
    for target, crm_rank in ((7, 7), (9, 9)):
        assert M.target_ranks(scores, np.array([target]), valid)[0] == crm_rank
    assert M.target_ranks(scores, np.array([1]), valid)[0] == 3  # inside the top 3: the LLM puts it last
