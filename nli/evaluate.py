"""How an NLI model is scored, for training and the pruning curve alike: every pair in a fixed
length-sorted order, padded to training's buckets; common/metrics.py's figures and FarsTail's subsets."""
import numpy as np
import torch

from common.batching import sorted_batches
from common.inference import predict_logits, split_figures
from nli.data import LABEL_NAMES, Encoded, collate
from nli.model import forward, uses_sdpa

EVAL_BATCH = 64  # pairs per evaluation batch; evaluation order is length-sorted and fixed


def pair_logits(model, data: Encoded, device, dtype) -> torch.Tensor:
    """Logits for every pair (in the split's order)."""
    sdpa = uses_sdpa(model)
    return predict_logits(model, forward, sorted_batches(data.lengths.tolist(), EVAL_BATCH),
                          lambda idx: collate(data, idx, device, sdpa_mask=sdpa), device, dtype)


def figures(logits: torch.Tensor, label_ids: torch.Tensor, hard: dict | None = None) -> dict:
    """A split's figures (common/inference.py), with accuracy on FarsTail's hard subsets and their easy
    complements when `hard` holds the test split's columns (also benchmarks/trainer_recipe.py's)."""
    out = split_figures(logits, label_ids, LABEL_NAMES)
    if hard:
        right = np.asarray(out["pred"]) == label_ids.numpy()
        out["subsets"] = {f"{kind}_{name.split('_')[1]}": float(right[np.asarray(flags) == want].mean())
                          for name, flags in hard.items() for kind, want in (("hard", 1), ("easy", 0))}
    return out
