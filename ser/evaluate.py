"""How a SER model is scored each epoch: logits of every clip, each padded to its own
whole-second bucket exactly as ser.predict pads it (HuBERT's group norm makes a clip's logits
depend on its padding), in a fixed length-sorted order (their figures: common/inference.split_figures)."""
import torch

from common.inference import predict_logits
from ser.data import bucket_batches, collate
from ser.model import forward

EVAL_BATCH = 8  # clips per evaluation batch


def clip_logits(model, waves: list[torch.Tensor], device, dtype, padding_value: float) -> torch.Tensor:
    """Logits for every clip (in the split's order)."""
    no_labels = torch.zeros(len(waves), dtype=torch.long)
    return predict_logits(model, forward, bucket_batches([len(w) for w in waves], EVAL_BATCH),
                          lambda idx: collate(waves, idx, no_labels, padding_value, device), device, dtype)
