"""Logits of a whole split, for evaluation and the pruning curve: batches in a fixed order,
under `torch.inference_mode()` and the run's precision, put back in the split's own order."""
from typing import Callable

import torch

from common.device import autocast


@torch.inference_mode()
def predict_logits(model, forward: Callable, batches: list[list[int]], make_batch: Callable, device, dtype
                   ) -> torch.Tensor:
    """(items, classes) logits on the CPU, row i for item i; `make_batch(idx)` gives host tensors."""
    model.eval()
    order, parts = [], []
    for idx in batches:
        b = {k: v.to(device, non_blocking=True) for k, v in make_batch(idx).items()}
        with autocast(device, dtype):
            parts.append(forward(model)(b).float())
        order += idx
    logits = torch.empty(len(order), parts[0].shape[1])
    logits[order] = torch.cat(parts).cpu()
    return logits
