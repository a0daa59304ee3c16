"""Benchmark CRM training: the textbook SASRec loop vs llmrec's, and thread counts / OpenMP wait policies.

    python scripts/bench_crm.py [--datasets ml-100k ml-1m] [--epochs 3] [--threads 2]
    python scripts/bench_crm.py --thread-matrix [--epochs 3]
    python scripts/bench_crm.py --crms [--datasets ml-100k amazon-beauty] [--epochs 3]

`--crms`: every trainable CRM (BPR, SASRec ce/bce, GRU4Rec, BERT4Rec, LightGCN) with its `conf/crm` defaults
(sequence models at max_len=50): seconds per training epoch and training items per second (predicted positions
for sequence models, (user, item) pairs for BPR and LightGCN), plus the seconds of one full-ranking pass over
every user's valid split.

`--thread-matrix`: BPR and SASRec epochs on ML-100K in fresh processes for every (threads 1 / all cores,
OpenMP waiting: OMP_WAIT_POLICY=ACTIVE / PASSIVE / GOMP_SPINCOUNT=10000, alone / beside a busy process spinning on
one core); prints seconds per epoch
and each cell's ratio to the fastest. The wait policy is read when OpenMP starts, so each cell is its own
process (`llmrec train` sets PASSIVE for CRM-only runs unless OMP_WAIT_POLICY is already set).

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
    ap.add_argument("--thread-matrix", action="store_true", help="1 vs N threads, wait policies, busy neighbour")
    ap.add_argument("--crms", action="store_true", help="seconds per epoch and items/s of every trainable CRM")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.thread_matrix:
        return thread_matrix(args.epochs)
    if args.crms:
        return crm_table(args.datasets, args.epochs, args.threads)
    if args.child:
        return child(args.child, args.threads, args.epochs)
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


#: (label, crm, overrides) timed by --crms.
CRM_VARIANTS = (("bpr", "bpr", []), ("sasrec ce", "sasrec", ["crm.max_len=50"]),
                ("sasrec bce", "sasrec", ["crm.max_len=50", "crm.loss=bce"]), ("gru4rec", "gru4rec", []),
                ("bert4rec", "bert4rec", []), ("lightgcn", "lightgcn", []))


def crm_table(datasets: list[str], epochs: int, threads: int | None) -> int:
    os.environ.setdefault("LLMREC_DATA_DIR", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    import torch

    from llmrec_cli import registry
    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.data.load import load_prepared
    from llmrec_cli.errors import LlmrecError
    from llmrec_cli.utils.runtime import seed_everything

    if threads:
        torch.set_num_threads(threads)
    registry.load_all()
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} cores={os.cpu_count()}; median of {epochs} "
          "epochs after a warm-up")
    print(f"{'dataset':<14} {'crm':<11} {'s/epoch':>8} {'items/s':>10} {'items':>9} {'rank all s':>10}")
    for name in datasets:
        for label, crm, over in CRM_VARIANTS:
            try:
                cfg = compose_run([f"dataset={name}", f"crm={crm}", *over])
                prepared = load_prepared(cfg.dataset)
            except LlmrecError as exc:
                print(f"{name:<14} skipped: {exc}")
                break
            data = prepared.train_view()
            seed_everything(0)
            model = registry.CRMS[crm].obj(cfg.crm, data.n_users, data.n_items)
            model.setup(data)
            windows = getattr(model, "_windows", None)
            items = sum(len(w) - 1 for w in windows) if windows is not None else int(data.train_lengths().sum())
            opt, rng = model.make_optimizer(), np.random.default_rng(0)
            model.train()
            model.train_epoch(data, opt, rng, progress=False)  # warm-up
            times = []
            for _ in range(epochs):
                t = time.perf_counter()
                model.train_epoch(data, opt, rng, progress=False)
                times.append(time.perf_counter() - t)
            model.eval()
            users = prepared.eval_users("valid")
            t = time.perf_counter()
            with torch.no_grad():
                for s in range(0, len(users), 512):
                    batch = users[s : s + 512]
                    model.score(batch, [prepared.history(int(u), "valid") for u in batch], None)
            rank_s = time.perf_counter() - t
            sec = float(np.median(times))
            print(f"{name:<14} {label:<11} {sec:>8.2f} {items / sec:>10,.0f} {items:>9,} {rank_s:>10.2f}")
    return 0


def child(crm: str, threads: int, epochs: int) -> int:
    """One cell of the thread matrix: median seconds per training epoch of CRM, as JSON on stdout."""
    import json

    os.environ.setdefault("LLMREC_DATA_DIR", str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    import torch  # loads OpenMP, which reads the wait settings now (before llmrec_cli could set a default)

    from llmrec_cli import registry
    from llmrec_cli.config.compose import compose_run
    from llmrec_cli.data.load import load_prepared
    from llmrec_cli.utils.runtime import seed_everything

    torch.set_num_threads(threads)
    registry.load_all()
    cfg = compose_run(["dataset=ml-100k", f"crm={crm}"])
    data = load_prepared(cfg.dataset).train_view()
    seed_everything(0)
    model = registry.CRMS[crm].obj(cfg.crm, data.n_users, data.n_items)
    model.setup(data)
    opt, rng = model.make_optimizer(), np.random.default_rng(0)
    model.train()
    model.train_epoch(data, opt, rng, progress=False)  # warm-up
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        model.train_epoch(data, opt, rng, progress=False)
        times.append(time.perf_counter() - t)
    print(json.dumps({"seconds": float(np.median(times)), "threads": torch.get_num_threads()}))
    return 0


#: OpenMP settings compared: spin until work comes (ACTIVE), sleep at once (PASSIVE), spin briefly then sleep.
POLICIES = {"ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
            "spin 10k": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"}}


def thread_matrix(epochs: int) -> int:
    import json
    import subprocess

    cores = os.cpu_count() or 1
    print(f"ML-100K, median s/epoch over {epochs} epochs after a warm-up; {cores} cores; busy = one other process "
          f"spinning on a core")
    print(f"{'crm':<7} {'neighbour':<9} {'threads':>7} {'wait policy':<11} {'s/epoch':>8} {'vs best':>8}")
    for crm in ("bpr", "sasrec"):
        for busy in (False, True):
            cells = []
            for threads in sorted({1, cores}):
                for policy in POLICIES:
                    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                    try:
                        env = {k: v for k, v in {**os.environ, **POLICIES[policy]}.items() if v != ""}
                        out = subprocess.run([sys.executable, __file__, "--child", crm, "--threads", str(threads),
                                              "--epochs", str(epochs)], env=env, capture_output=True, text=True,
                                             check=True).stdout
                    finally:
                        if spinner is not None:
                            spinner.kill()
                            spinner.wait()
                    cells.append((threads, policy, json.loads(out.strip().splitlines()[-1])["seconds"]))
            best = min(c[2] for c in cells)
            for threads, policy, sec in cells:
                print(f"{crm:<7} {'busy' if busy else 'alone':<9} {threads:>7} {policy:<11} {sec:>8.2f} "
                      f"{sec / best:>7.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
