"""llmrec: one split, one candidate set and one evaluator for LLM-enhanced recommenders."""
import os as _os

# OpenMP threads that cannot get a core spin-wait by default and slow every process sharing the CPU (BPR: 0.9 s
# an epoch alone, 4-13 s beside one busy process). libgomp reads this once, when torch loads it, so it is set
# here, before any torch import; an explicit OMP_WAIT_POLICY wins. Measured in scripts/bench_crm.py
# --thread-matrix.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
