"""One run over several processes, started by torchrun, with PyTorch's DistributedDataParallel
(NCCL on GPUs, gloo on CPUs; torchrun's --nnodes / --rdzv-endpoint span machines). Run without
torchrun, every function here is a no-op and nothing changes.

    torchrun --nproc_per_node 2 -m nli.train --out runs/nli/all-ddp ...

What a process does:
- Every process builds the same batches (LengthGroupedBatches gives the same list for a (seed,
  epoch) everywhere) and takes its share of each optimizer batch: rows rank, rank + N, … cut into
  micro-batches of ceil(--batch-size / N) rows (common/batching.py, micro_batches). Each of its rows is weighted N / (rows in the
  optimizer batch); DDP averages gradients over the N processes, so the update is that of the
  whole batch's mean loss: N processes give the update one process gives with the same flags.
  `--grad-accum` skips the all-reduce on all but the last micro-batch (`no_sync`).
- Model initialisation is the same everywhere (DDP also copies rank 0's weights at the start);
  dropout, LayerDrop and SpecAugment then draw from a stream seeded by (seed, rank).
- Every process evaluates (each holds the same weights after every update, so each computes the
  same figures); only rank 0 writes files, logs and checkpoints, and a checkpoint holds every
  process's RNG state, so --resume with the same number of processes continues each stream.
- CUDA graphs stay off under DDP (see docs/scale-out.md).
"""
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.errors import UserError
from common.rng import seed_everything


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device_choice: str) -> Dist:
    """Join torchrun's process group when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_choice != "cpu" and torch.cuda.is_available()
    if device_choice == "cuda" and not cuda:
        raise UserError("--device cuda was given but no CUDA device is available")
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local)


def close(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model, d: Dist, device: torch.device, seed: int):
    """The model DDP trains (the plain model when not distributed). Under DDP (which copies rank
    0's weights everywhere) each process then draws dropout and the like from its own stream,
    seeded by (seed, rank)."""
    if not d.active:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    seed_everything(seed * 1_000_003 + d.rank)
    return ddp


def sync_unless(ddp, skip: bool):
    """`no_sync` for micro-batches before the last of a step (their gradients just add up)."""
    return ddp.no_sync() if skip and hasattr(ddp, "no_sync") else contextlib.nullcontext()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


def gather(obj) -> list:
    """Every process's `obj`, in rank order (one element when not distributed)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """rank 0's `obj` on every process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def distributed(device_choice: str):
    """The process group for the length of a run (see init_distributed). A run that ends well
    waits for every process (rank 0 writes the results last) before leaving the group: a process
    that left early would tear down its connections under the others."""
    d = init_distributed(device_choice)
    ok = False
    try:
        yield d
        ok = True
    finally:
        if ok:
            barrier()
        close(d)
