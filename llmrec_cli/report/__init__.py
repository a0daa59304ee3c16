"""Reports over the MLflow store: `llmrec compare` (table with CIs and paired tests) and `llmrec plot`.

- `select`: which runs (experiments, sweep parent, dataset, tags, status) and how they group into rows;
- `stats`: mean / std / Student-t CI over seeds, paired tests on per-user metrics;
- `compare`: builds the comparison (one row per group, a reference per dataset, p-values);
- `render`: rich table, markdown, csv, json;
- `plots`: the quadrant map and the quality-vs-cost Pareto plot (PNG).

Nothing here imports pandas, scipy, matplotlib or mlflow at module level, so `llmrec --help` stays instant.
"""
