"""Score ML-100K through a real OpenAI-compatible server twice: a cold run, then a rerun from the response cache.

    python scripts/endpoint_acceptance.py --base-url http://127.0.0.1:8000/v1 --model NAME --scoring generate
    python scripts/endpoint_acceptance.py --base-url http://127.0.0.1:8081/v1 --model NAME --scoring listwise

Quadrant 3 (`zero_shot`, `model=endpoint`) on `dataset=ml-100k` with `eval.max_users` users (default 50), the
shared sampled candidates (`eval.num_negatives`, default 19), valid and test splits, seed 0. The cache starts
empty (`--cache`, default a new folder under /tmp) so the first run asks the server everything and the second
nothing. Prints, per run: NDCG@10 / HR@10 (test, sampled), the answer-validity rates (generate), requests, cache
hit rate, prompt/completion tokens, latency p50/p95, wall seconds; then whether every valid/test/answers metric
of the rerun equals the first run's. Any extra KEY=VALUE arguments are passed to `llmrec train` as overrides.
Real data comes from $LLMREC_DATA_DIR.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHOWN = ("test/sampled/ndcg_10", "test/sampled/hr_10", "answers/valid_answer_rate", "answers/complete_rate",
         "answers/duplicate_rate", "answers/out_of_candidates_rate", "answers/mean_candidates_ranked",
         "endpoint/requests", "endpoint/cache_hit_rate", "endpoint/prompt_tokens", "endpoint/completion_tokens",
         "endpoint/latency_p50_s", "endpoint/latency_p95_s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True, help="the served model name, as /v1/models lists it")
    ap.add_argument("--scoring", default="generate", choices=("generate", "listwise", "pointwise"))
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--cache", default=None, help="LLMREC_CACHE_DIR for the runs (default: a new /tmp folder)")
    ap.add_argument("--tracking-uri", default=None, help="default: sqlite:///<cache>/mlflow.db")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cache = Path(args.cache or tempfile.mkdtemp(prefix="llmrec-endpoint-"))
    os.environ["LLMREC_CACHE_DIR"] = str(cache)

    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.pipelines.train import run_train

    uri = args.tracking_uri or f"sqlite:///{cache}/mlflow.db"
    over = ["quadrant=3", "model=endpoint", f"model.base_url={args.base_url}", f"model.name={args.model}",
            f"method.scoring={args.scoring}", "dataset=ml-100k", f"eval.max_users={args.users}",
            "eval.protocols=[sampled]", "trainer.progress=false", "seed=0",
            f"tracking.uri={uri}", *args.overrides]
    runs = []
    for label in ("cold", "cached rerun"):
        t0 = time.perf_counter()
        cfg = compose_run([*over, f"run_name=endpoint-{args.scoring}-{label.split()[0]}"])
        summary = run_train(cfg)
        runs.append((label, summary, time.perf_counter() - t0))
    print(f"\nML-100K, leave-one-out, {args.users} users, sampled candidates (1 target + "
          f"{cfg.eval.num_negatives} negatives), seed 0; model {args.model} at "
          f"{args.base_url}, method.scoring={args.scoring}")
    print(f"| metric | {' | '.join(label for label, _, _ in runs)} |")
    print("|---|" + "---:|" * len(runs))
    for key in SHOWN:
        if key in runs[0][1].metrics:
            print(f"| {key} | " + " | ".join(f"{s.metrics.get(key, float('nan')):.4g}" for _, s, _ in runs) + " |")
    print("| wall seconds | " + " | ".join(f"{w:.1f}" for _, _, w in runs) + " |")
    first, second = runs[0][1].metrics, runs[1][1].metrics
    keys = [k for k in first if k.startswith(("valid/", "test/", "answers/"))]
    differ = [k for k in keys if second.get(k) != first[k]]
    print(f"\nrerun: {len(keys) - len(differ)} of {len(keys)} valid/test/answers metrics identical"
          + (f"; differ: {', '.join(differ)}" if differ else ""))
    print(f"runs: {', '.join(s.run_id for _, s, _ in runs)} in {uri}")
    return 1 if differ or second.get("endpoint/requests", 1) != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
