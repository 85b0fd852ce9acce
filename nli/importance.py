"""Gradient-based head importance (Michel, Levy and Neubig, NeurIPS 2019; docs/nli.md): a gate ξ_h = 1 on
head h's slice of the attention output projection's input (the only way its output reaches the layer),
I_h = mean over batches of |∂L_b/∂ξ_h|, normalised per layer. Heads keep the unpruned model's numbers."""
import contextlib

import torch
import torch.nn.functional as F

from common.device import autocast
from nli.data import collate
from nli.model import encoder_layers, forward, uses_sdpa


def remaining_heads(model, layer: int) -> list[int]:
    """Original numbers of the heads layer `layer` still has."""
    gone = set((getattr(model.config, "pruned_heads", None) or {}).get(str(layer), []))
    return [h for h in range(model.config.num_attention_heads) if h not in gone]


@contextlib.contextmanager
def head_gates(model):
    """Per layer, a gate of ones per remaining head (requires_grad), applied while inside."""
    gates, handles = [], []
    try:
        for layer in encoder_layers(model):
            dense = layer.attention.output.dense
            size = layer.attention.self.attention_head_size
            gate = torch.ones(dense.in_features // size, device=dense.weight.device, requires_grad=True)

            def scale(module, args, gate=gate, size=size):
                x = args[0]
                return (x * gate.to(x.dtype).repeat_interleave(size),) + tuple(args[1:])
            handles.append(dense.register_forward_pre_hook(scale))
            gates.append(gate)
        yield gates
    finally:
        for h in handles:
            h.remove()


def batch_loss(model, batch: dict, device, dtype) -> torch.Tensor:
    """Mean cross-entropy of one collated batch (host tensors), under the run's precision."""
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with autocast(device, dtype):
        logits = forward(model)(b)
    return F.cross_entropy(logits.float(), b["label_ids"])


def raw_importance(model, data, batches: list[list[int]], device, dtype) -> list[torch.Tensor]:
    """Per layer, mean over `batches` of |∂L_b/∂ξ| for each remaining head (in the layer's order)."""
    was_training = model.training
    model.eval()
    sdpa = uses_sdpa(model)
    with head_gates(model) as gates:
        total = [torch.zeros_like(g) for g in gates]
        for idx in batches:
            loss = batch_loss(model, collate(data, idx, device, sdpa_mask=sdpa), device, dtype)
            for t, g in zip(total, torch.autograd.grad(loss, gates)):
                t += g.detach().abs()
    model.train(was_training)
    return [(t / len(batches)).cpu() for t in total]


def head_importance(model, data, batches, device, dtype) -> dict[int, dict[int, float]]:
    """{layer: {original head number: importance normalised within the layer}}."""
    scores = {}
    for layer, raw in enumerate(raw_importance(model, data, batches, device, dtype)):
        norm = raw.norm() if raw.norm() > 0 else torch.tensor(1.0)
        scores[layer] = {h: float(v) for h, v in zip(remaining_heads(model, layer), raw / norm)}
    return scores
