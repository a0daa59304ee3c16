"""candidates=crm_topk: the LLM reorders the CRM's top k, the CRM's order holds below (filter-then-rerank), and
nothing of the CRM's order reaches the LLM: not through ties, not through the order of the prompt."""
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


HISTORIES = {0: np.array([2]), 1: np.array([], dtype=np.int64)}


class ReverseLLM(LLMMethod):
    """An 'LLM' that prefers higher item ids: the reverse of the CRM."""

    def score(self, users, histories, items):
        self.seen = items.copy()
        return items.astype(np.float64)


class IndifferentLLM(ReverseLLM):
    """Scores every candidate the same: the order among them must not come from the CRM."""

    def score(self, users, histories, items):
        self.seen = items.copy()
        return np.zeros(items.shape)


class FirstShownLLM(ReverseLLM):
    """Pure position bias: the first candidate listed in the prompt wins."""

    order_sensitive = True

    def score(self, users, histories, items):
        self.seen = items.copy()
        return -np.broadcast_to(np.arange(items.shape[1], dtype=np.float64), items.shape)


def make(k, cls=ReverseLLM, permutations=1):
    cfg = OmegaConf.create({"candidates": {"source": "crm_topk", "k": k}, "eval": {"permutations": permutations}})
    m = cls(OmegaConf.create({}), RunContext(cfg=cfg, seed=0, device="cpu", output_dir=None))
    m.data, m.prefilter = FakeData(), FakeCRM(10)
    return m


def full(m, users):
    return m.score_full(np.asarray(users), [HISTORIES[u] for u in users])


def test_llm_reorders_the_top_k_and_the_crm_order_holds_below():
    m = make(k=3)
    scores = full(m, [0, 1])
    assert scores.shape == (2, 11)
    # user 0 has item 2 in its history: the CRM's top 3 are 1, 3, 4 -> the LLM prefers 4, 3, 1
    assert m.seen.tolist() == [[1, 3, 4], [1, 2, 3]]
    order0 = [i for i in np.argsort(-scores[0], kind="stable") if i not in (0, 2)]
    assert order0[:3] == [4, 3, 1] and order0[3:] == [5, 6, 7, 8, 9, 10]
    order1 = [i for i in np.argsort(-scores[1], kind="stable") if i != 0]
    assert order1 == [3, 2, 1, 4, 5, 6, 7, 8, 9, 10]


def test_a_target_outside_the_top_k_keeps_its_crm_rank():
    m = make(k=3)
    scores = full(m, [1])
    valid = np.ones_like(scores, dtype=bool)
    valid[:, 0] = False
    for target, crm_rank in ((7, 7), (9, 9)):
        assert M.target_ranks(scores, np.array([target]), valid)[0] == crm_rank
    assert M.target_ranks(scores, np.array([1]), valid)[0] == 3  # inside the top 3: the LLM puts it last


def test_llm_ties_rank_the_target_below_instead_of_following_the_crm():
    """An LLM that cannot tell the top k apart leaves them tied: a tied target ranks below all of them (as
    everywhere else), never at its CRM position."""
    m = make(k=4, cls=IndifferentLLM)
    scores = full(m, [1])
    valid = np.ones_like(scores, dtype=bool)
    valid[:, 0] = False
    for target in (1, 2, 3, 4):  # the CRM's top 4, whatever the CRM thought of them
        assert M.target_ranks(scores, np.array([target]), valid)[0] == 4
    assert M.target_ranks(scores, np.array([5]), valid)[0] == 5  # below the top k: the CRM's order


def test_the_prompt_order_is_a_seeded_shuffle_not_the_crm_order():
    from llmrec_cli.eval.orders import presentation_orders

    m = make(k=6, cls=FirstShownLLM)
    users = np.arange(2)
    scores = full(m, [0, 1])
    crm_top = np.asarray(m.prefilter.topk(users, [HISTORIES[0], HISTORIES[1]], 6))
    shown = np.take_along_axis(crm_top, presentation_orders(0, users, crm_top, 1)[0], axis=1)
    np.testing.assert_array_equal(m.seen, shown)
    assert not (m.seen == crm_top).all()  # not the CRM's order
    # the two-stage winner is whatever was shown first: position bias cannot hand over the CRM's ranking
    assert [int(np.argmax(row)) for row in scores] == shown[:, 0].tolist()
    # the same candidates arriving in another order are shown the same way
    np.testing.assert_array_equal(np.take_along_axis(crm_top[:, ::-1], presentation_orders(
        0, users, crm_top[:, ::-1], 1)[0], axis=1), shown)


def test_permutations_average_several_prompt_orders():
    m = make(k=6, cls=FirstShownLLM, permutations=5)
    calls = []
    original = m.score

    def counting(users, histories, items):
        calls.append(items.copy())
        return original(users, histories, items)

    m.score = counting
    full(m, [0, 1])
    assert len(calls) == 5 and len({c.tobytes() for c in calls}) > 1
