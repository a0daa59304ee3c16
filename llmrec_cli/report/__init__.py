"""Reports over the MLflow store: `llmrec compare` (table with CIs and paired tests) and `llmrec plot`.

- `select`: which runs (experiments, sweep parent, dataset, tags, status) and how they group into rows (one
  protocol per row: runs of different `protocol_hash` are never averaged);
- `stats`: mean / std / Student-t CI over seeds, paired tests on per-user metrics of matched candidate sets,
  Holm / Benjamini-Hochberg correction (statsmodels);
- `compare`: builds the comparison (one row per group and protocol, a reference per dataset and protocol,
  corrected p-values);
- `render`: rich table, markdown, csv, json;
- `plots`: the quadrant map and the quality-vs-cost Pareto plot (PNG).

Nothing here imports pandas, scipy, matplotlib or mlflow at module level, so `llmrec --help` stays instant.
"""
