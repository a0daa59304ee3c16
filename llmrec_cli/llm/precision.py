"""Which dtype `model.dtype=auto` means on this machine: measured, not guessed.

- CUDA: bfloat16 (every GPU llmrec targets has bf16 tensor cores).
- CPU: bfloat16 only when it pays here. Some CPUs have native bf16 matrix units (Intel AMX, AVX512-BF16),
  where a bf16 forward pass of a 135M Llama runs about 3x faster than fp32; on others bf16 is emulated and
  slower. `cpu_bf16_pays(width)` first reads the CPU flags (Linux `/proc/cpuinfo`: `amx_bf16` or
  `avx512_bf16`; no flag, no bf16), then times a [256, width] x [width, 4*width] matmul in both dtypes on the
  threads torch will use (about 0.1 s) and says yes when bf16 is at least `MIN_SPEEDUP` times faster. Tiny test
  models (width < `MIN_WIDTH`) stay fp32: at that size the dtype does not matter and fp32 is exact.
- `LLMREC_CPU_BF16=0|1` overrides the decision (1: bf16 whenever asked for auto, 0: never).

Scores stay fp32 whatever the weights (the Scorer computes the LM head in fp32) and the trainable LoRA /
projector weights and their AdamW state stay fp32 (peft keeps adapters in fp32 over a bf16 base).
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

MIN_SPEEDUP = 1.3
MIN_WIDTH = 256
CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags() -> list[str]:
    """The CPU's native-bf16 flags (empty when there are none or the platform does not say)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in CPU_FLAGS if f in flags]


@functools.cache
def matmul_speedup(width: int, reps: int = 6) -> float:
    """fp32 time / bf16 time of a [256, WIDTH] x [WIDTH, 4*WIDTH] matmul on this CPU (best of REPS)."""
    import torch

    a = torch.randn(256, width)
    b = torch.randn(width, 4 * width)

    def best(x, y) -> float:
        x @ y  # warm-up (kernel selection)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(a, b) / max(best(a.bfloat16(), b.bfloat16()), 1e-9)


def cpu_bf16_pays(width: int) -> tuple[bool, str]:
    """(use bf16?, why) for a model of hidden size WIDTH on this CPU."""
    forced = os.environ.get("LLMREC_CPU_BF16", "").strip().lower()
    if forced in ("0", "1", "true", "false", "yes", "no"):
        on = forced in ("1", "true", "yes")
        return on, f"LLMREC_CPU_BF16={forced}"
    if width < MIN_WIDTH:
        return False, f"hidden size {width} < {MIN_WIDTH}: fp32"
    flags = cpu_bf16_flags()
    if not flags:
        return False, "no native bf16 on this CPU (no amx_bf16/avx512_bf16 flag): fp32"
    speedup = matmul_speedup(int(width))
    verdict = speedup >= MIN_SPEEDUP
    return verdict, f"{'+'.join(flags)}: bf16 matmul {speedup:.2f}x fp32 ({'bf16' if verdict else 'fp32'})"


def model_width(model) -> int:
    config = getattr(model, "config", None)
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return 0
