"""Logits of a whole split, for evaluation and the pruning curve: batches in a fixed order,
under `torch.inference_mode()` and the run's precision, put back in the split's own order;
and a split's figures from them."""
import math
from typing import Callable

import torch
import torch.nn.functional as F

from common.device import autocast
from common.errors import RunFailed
from common.metrics import summarize


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


def split_figures(logits: torch.Tensor, label_ids: torch.Tensor, label_names: list[str]) -> dict:
    """A split's figures (common/metrics.py) with its predictions; stops the run on a NaN loss."""
    loss = F.cross_entropy(logits, label_ids).item()
    if not math.isfinite(loss):
        raise RunFailed("the evaluation loss is NaN or infinite; the run stopped and wrote no results")
    pred = logits.argmax(1).numpy()
    return {**summarize(label_ids.numpy(), pred, label_names, loss), "pred": pred.tolist()}
