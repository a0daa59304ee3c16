"""Data-parallel LoRA training over several processes (GPUs), set up through accelerate.

Launch one process per GPU with either launcher; nothing else changes:

    accelerate launch --num_processes 4 -m llmrec_cli train method=tallrec model=llama-lora ...
    torchrun --nproc_per_node 4 -m llmrec_cli train method=tallrec model=llama-lora ...

Every process loads the data and the backbone (on `cuda:<local rank>`; on CPU the processes talk over gloo,
which is how the tests run it). Rank 0 alone talks to MLflow, validates, writes checkpoints and evaluates;
the others receive its run id and its validation results, so every rank takes the same early-stopping
decisions. Each rank trains on every `world`-th batch of the same seeded order, and the trainable gradients
(LoRA adapters, a projector: small tensors) are averaged across ranks before every optimizer step, so N
processes with `trainer.batch_size=B` take the same steps as one process with batch size N*B.
A single process (no launcher) never imports or initialises torch.distributed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from the launcher's environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str) -> str:
    """Join the process group (once) and return this rank's device: `cuda:<local rank>`, or `cpu`."""
    w = world()
    if not w.active:
        return device
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    if state.device.type == "cuda":
        import torch

        torch.cuda.set_device(state.device)
        return f"cuda:{state.device.index}"
    return "cpu"


def broadcast(obj: Any) -> Any:
    """Rank 0's OBJ on every rank (picklable objects); OBJ itself in a single process."""
    if not world().active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_gradients(params) -> None:
    """Average the gradients of PARAMS across ranks (a missing gradient counts as zero)."""
    if not world().active:
        return
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world().size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def reduction_device():
    """Where collective ops must hold their tensors: the process's GPU under NCCL (which rejects CPU tensors),
    the CPU under gloo."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across(*values: float) -> list[float]:
    """Element-wise sums of VALUES over ranks (loss and token counts for logging)."""
    if not world().active:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=reduction_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier() -> None:
    if world().active:
        import torch.distributed as dist

        dist.barrier()
