"""Benchmark SASRec training: the textbook loop vs llmrec's, side by side in one process.

    python scripts/bench_crm.py [--datasets ml-100k ml-1m] [--epochs 3] [--threads 2]

Baseline ("naive"): random batches padded to max_len (as the reference SASRec implementations do).
Ours: length-bucketed batches padded only to the longest window in the batch (same loss, same model).
Prints seconds per epoch, training items (predicted positions) per second, and the speed-up ratio.
Real data comes from $LLMREC_DATA_DIR (default ../shared/data); a dataset that is not there is skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-1m"])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (after one warm-up epoch)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    os.environ.setdefault("LLMREC_DATA_DIR", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

    import torch

    from llmrec_cli import registry
    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.crm.sasrec import SASRec
    from llmrec_cli.data.load import load_prepared
    from llmrec_cli.errors import LlmrecError
    from llmrec_cli.utils.runtime import resolve_device, seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)
    registry.load_all()
    device = resolve_device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'dataset':<10} {'variant':<7} {'s/epoch':>8} {'items/s':>10} {'windows':>8} {'items':>9}")
    for name in args.datasets:
        try:
            cfg = compose_run([f"dataset={name}", "crm=sasrec"])
            data = load_prepared(cfg.dataset).train_view()
        except LlmrecError as exc:
            print(f"{name:<10} skipped: {exc}")
            continue
        results = {}
        for variant in ("naive", "ours"):
            seed_everything(0)
            model = SASRec(cfg.crm, data.n_users, data.n_items).to(device)
            model.pad_to_max_len = variant == "naive"
            model.setup(data)
            items = sum(len(w) - 1 for w in model._windows)
            opt = model.make_optimizer()
            rng = np.random.default_rng(0)
            model.train()
            model.train_epoch(data, opt, rng, progress=False)  # warm-up
            times = []
            for _ in range(args.epochs):
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model.train_epoch(data, opt, rng, progress=False)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            sec = float(np.median(times))
            results[variant] = sec
            print(f"{name:<10} {variant:<7} {sec:>8.2f} {items / sec:>10,.0f} {len(model._windows):>8,} {items:>9,}")
        print(f"{name:<10} speed-up ours/naive: {results['naive'] / results['ours']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
