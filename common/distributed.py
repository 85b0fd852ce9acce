"""One run over several processes, started by torchrun, with PyTorch's DistributedDataParallel
(NCCL on GPUs, gloo on CPUs; docs/scale-out.md). Without torchrun every function here is a no-op.

    torchrun --nproc_per_node 2 -m nli.train --out runs/nli/all-ddp ...
"""
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

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


def wrap(model, d: Dist, device: torch.device, seed: int):
    """The model DDP trains (the plain model when not distributed); then one RNG stream per process."""
    if not d.active:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    seed_everything(seed * 1_000_003 + d.rank)
    return ddp


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
    """A run's Dist, in torchrun's process group when WORLD_SIZE > 1; a run that ends well waits for all."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))) if world > 1 else Dist()
    cuda = device_choice != "cpu" and torch.cuda.is_available()  # (--device cuda without one: choose_device refuses)
    if d.active and cuda:
        torch.cuda.set_device(d.local_rank)
    if d.active and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    ok = False
    try:
        yield d
        ok = True
    finally:
        if ok:
            barrier()
        if d.active and dist.is_initialized():
            dist.destroy_process_group()
