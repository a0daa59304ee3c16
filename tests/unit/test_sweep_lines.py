"""A sweep prints each job's headline result as the job finishes, read from the job's results table."""
from llmrec_cli.pipelines.sweep import _result_line

TABLE = """\
│ split/protocol  │  hr_10 │ ndcg_10 │ mrr_10 │   gauc │    auc │ users │
│ test/sampled    │ 0.9250 │  0.6779 │ 0.5984 │        │        │   200 │
│ test/full       │ 0.1600 │  0.0815 │ 0.0576 │        │        │   200 │
│ test/pointwise  │        │         │        │ 0.8650 │ 0.8579 │   200 │"""


def test_the_headline_ndcg_is_read_from_the_results_table():
    assert _result_line(TABLE.splitlines()) == "test/sampled ndcg_10=0.6779, test/full ndcg_10=0.0815"
    assert _result_line(["error: something"]) == ""
