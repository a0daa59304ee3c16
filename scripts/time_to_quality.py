"""Time-to-quality of CRM settings: how many epochs (and seconds) until valid NDCG@10 is within 2% of its best.

    python scripts/time_to_quality.py --crm sasrec --variant default= --variant quick=crm.batch_size=32,crm.lr=0.002

Each variant is `llmrec train quadrant=baseline crm=CRM dataset=DATASET` plus its comma-separated overrides, run
to early stopping in this process (one MLflow store in a temporary folder). Prints, per variant: the best valid
NDCG@10 and its epoch, the first epoch within `--within` of that best and the training seconds until then, the
epochs run, test full/sampled NDCG@10, and the ratio of seconds-to-quality against the first variant.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crm", default="sasrec")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--variant", action="append", required=True, help="NAME=key=value,key=value (or NAME=)")
    ap.add_argument("--within", type=float, default=0.02, help="relative distance to the best (default 2%%)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("LLMREC_DATA_DIR", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    os.environ["LLMREC_NO_PROGRESS"] = "1"

    from mlflow.tracking import MlflowClient

    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.pipelines.train import run_train

    store = tempfile.mkdtemp(prefix="llmrec-ttq-")
    uri = f"sqlite:///{store}/mlflow.db"
    rows = []
    for spec in args.variant:
        name, _, extra = spec.partition("=")
        overrides = [o for o in extra.split(",") if o]
        cfg = compose_run(["quadrant=baseline", f"crm={args.crm}", f"dataset={args.dataset}", f"seed={args.seed}",
                           f"trainer.num_threads={args.threads}", "trainer.device=cpu", f"tracking.uri={uri}",
                           f"output_dir={store}/outputs", f"run_name=ttq-{name}", *overrides])
        t0 = time.perf_counter()
        summary = run_train(cfg)
        wall = time.perf_counter() - t0
        client = MlflowClient(tracking_uri=uri)
        valid = {m.step: m.value for m in client.get_metric_history(summary.run_id, "valid/full/ndcg_10")
                 if m.step > 0}  # step 0: the final evaluation of the restored best epoch
        secs = {m.step: m.value for m in client.get_metric_history(summary.run_id, "train/epoch_seconds")}
        best_epoch = max(valid, key=lambda e: (valid[e], -e))
        best = valid[best_epoch]
        reach = min(e for e, v in valid.items() if v >= (1 - args.within) * best)
        rows.append({"variant": name, "overrides": " ".join(overrides) or "(defaults)", "best": best,
                     "best_epoch": best_epoch, "reach_epoch": reach,
                     "reach_train_s": sum(v for e, v in secs.items() if e <= reach), "epochs": max(valid),
                     "wall_s": wall, "test_full": summary.metrics["test/full/ndcg_10"],
                     "test_sampled": summary.metrics["test/sampled/ndcg_10"]})
        print(f"{name}: done in {wall:.0f} s", file=sys.stderr, flush=True)
    base = rows[0]["reach_train_s"]
    print(f"\ncrm={args.crm} dataset={args.dataset} seed={args.seed} threads={args.threads}; "
          f"quality = valid/full/ndcg_10 within {args.within:.0%} of the run's best\n")
    print("| variant | overrides | best valid NDCG@10 (epoch) | epoch within 2% | train s to it | epochs run "
          "| wall s | test full NDCG@10 | test sampled NDCG@10 | time-to-quality vs first |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['overrides']} | {r['best']:.4f} ({r['best_epoch']}) | {r['reach_epoch']} | "
              f"{r['reach_train_s']:.1f} | {r['epochs']} | {r['wall_s']:.0f} | {r['test_full']:.4f} | "
              f"{r['test_sampled']:.4f} | {base / r['reach_train_s'] if r['reach_train_s'] else float('nan'):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
