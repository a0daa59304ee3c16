"""Reading rankings out of free-text LLM answers: letters, numbers, titles, chains of thought, and the errors."""
from __future__ import annotations

import numpy as np
import pytest

from llmrec_cli.llm.answers import parse_ranking, ranking_scores, validity

TITLES = ["Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Fargo (1996)"]


@pytest.mark.parametrize("text, order, how", [
    ("C, A, B, D", [2, 0, 1, 3], "letters"),
    ("(B) > (D) > (A)", [1, 3, 0], "letters"),
    ("1. C\n2. A\n3. D", [2, 0, 3], "letters"),
    ("I think B is the best, then A.", [1, 0], "letters"),
    ("3, 1, 2", [2, 0, 1], "numbers"),
    ("1. Fargo (1996)\n2. Heat (1995)\n3. Toy Story", [3, 1, 0], "titles"),
    ("fargo, casino (1995)", [3, 2], "titles"),
    ("Let me think step by step. The user likes crime films, so D or B.\nFinal answer: B, D, C, A", [1, 3, 2, 0],
     "letters"),
])
def test_answers_in_every_shape_are_read(text, order, how):
    parsed = parse_ranking(text, 4, TITLES)
    assert parsed.order == order and parsed.how == how and parsed.valid


def test_duplicates_and_out_of_candidate_labels_are_counted_not_ranked():
    parsed = parse_ranking("B, B, Z, A, 9", 4, TITLES)
    assert parsed.order == [1, 0] and parsed.duplicates == 1 and parsed.out_of_candidates == 1
    assert not parse_ranking("no idea, sorry", 4, TITLES).valid
    assert not parse_ranking("", 4, None).valid


def test_unranked_candidates_rank_last_in_a_seeded_order():
    parsed = parse_ranking("C, A", 5, None)
    a = ranking_scores(parsed, 5, np.random.default_rng(7))
    b = ranking_scores(parsed, 5, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    ranked = np.argsort(-a)
    assert ranked[:2].tolist() == [2, 0] and set(ranked[2:].tolist()) == {1, 3, 4} and len(set(a.tolist())) == 5
    orders = {tuple(np.argsort(-ranking_scores(parsed, 5, np.random.default_rng(s)))[2:]) for s in range(20)}
    assert len(orders) > 1  # the tail is shuffled, not in candidate order


def test_validity_rates():
    parses = [parse_ranking(t, 3, None) for t in ("A, B, C", "B, B", "nothing", "C, Z")]
    rates = validity(parses, 3)
    assert rates["valid_answer_rate"] == 0.75 and rates["duplicate_rate"] == 0.25
    assert rates["out_of_candidates_rate"] == 0.25 and rates["complete_rate"] == 0.25
    assert rates["mean_candidates_ranked"] == pytest.approx((3 + 1 + 0 + 1) / 4)


def test_titles_with_commas_and_typos():
    titles = ["Usual Suspects, The (1995)", "Godfather, The (1972)", "Heat (1995)"]
    assert parse_ranking("Godfather, The (1972) then Usual Suspects, The", 3, titles).order == [1, 0]
    assert parse_ranking("1. Godfater, The (1972)\n2. Heet (1995)", 3, titles).order == [1, 2]
    assert not parse_ranking("the theatre was nice", 3, titles).valid  # "heat" is not a word of it
