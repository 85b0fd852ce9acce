"""How an NLI model is scored, for training and the pruning curve alike: every pair in a fixed
length-sorted order, padded to training's buckets; common/metrics.py's figures and FarsTail's subsets."""
import math

import numpy as np
import torch.nn.functional as F

from common.batching import sorted_batches
from common.errors import RunFailed
from common.inference import predict_logits
from common.metrics import summarize
from nli.data import LABEL_NAMES, Encoded, collate
from nli.model import forward, uses_sdpa

EVAL_BATCH = 64  # pairs per evaluation batch; evaluation order is length-sorted and fixed


def pair_logits(model, data: Encoded, device, dtype) -> tuple[np.ndarray, float]:
    """Logits for every pair (in the split's order) and the mean cross-entropy."""
    sdpa = uses_sdpa(model)
    logits = predict_logits(model, forward, sorted_batches(data.lengths.tolist(), EVAL_BATCH),
                            lambda idx: collate(data, idx, device, sdpa_mask=sdpa), device, dtype)
    return logits.numpy(), F.cross_entropy(logits, data.label_ids).item()


def evaluate(model, data: Encoded, device, dtype, hard: dict | None = None) -> dict:
    """A split's figures (common/metrics.py) and predictions; stops the run on a NaN loss."""
    logits, loss = pair_logits(model, data, device, dtype)
    if not math.isfinite(loss):
        raise RunFailed("the evaluation loss is NaN or infinite; the run stopped and wrote no results")
    return figures(logits, data.label_ids.numpy(), loss, hard)


def figures(logits: np.ndarray, true: np.ndarray, loss: float, hard: dict | None = None) -> dict:
    """A split's figures from its logits and true label ids (also benchmarks/trainer_recipe.py's)."""
    pred = logits.argmax(1)
    out = summarize(true, pred, LABEL_NAMES, loss)
    out["pred"] = pred.tolist()
    if hard:  # FarsTail's test columns: accuracy on each hard subset and its easy complement
        out["subsets"] = {f"{kind}_{name.split('_')[1]}": float((pred == true)[np.asarray(flags) == want].mean())
                          for name, flags in hard.items() for kind, want in (("hard", 1), ("easy", 0))}
    return out
