"""ParsBERT (any BERT-family encoder) for sequence-pair classification, and the study's three
ablations done for real: keep the first N layers, remove attention heads, freeze layers.

transformers 5.x removed `prune_heads`, `config.pruned_heads` and `head_mask`. Heads are removed
here by slicing each attention block's query/key/value rows and its output projection's columns
with `prune_linear_layer` (what the old `prune_heads` did); the v5 attention code reshapes with
`view(..., -1, head_size)`, so it infers the smaller head count and every attention backend
(SDPA, eager) keeps working. The removed heads are written to the config as `pruned_heads`
({"layer": [heads]}, JSON string keys), and `load_classifier` rebuilds those shapes on reload.
"""
import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers.pytorch_utils import prune_linear_layer

from common.errors import UserError


def encoder_layers(model) -> torch.nn.ModuleList:
    return model.base_model.encoder.layer


def load_weights(model, folder: Path) -> None:
    """Load safetensors weights (one file or shards) saved by save_pretrained, strictly."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(folder / name))
    model.load_state_dict(state, strict=True)


def load_classifier(name: str, labels: list[str] | None = None):
    """A sequence classifier from a hub id or a save_pretrained folder.

    `labels` sets a fresh classification head with those names (training); None keeps the
    folder's own head and label names (prediction). A folder whose config lists `pruned_heads`
    is rebuilt at full size, pruned to the same shapes, then loaded, since plain
    `from_pretrained` would meet weights of the wrong shape."""
    kw = {} if labels is None else {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                    "label2id": {n: i for i, n in enumerate(labels)}}
    try:
        config = AutoConfig.from_pretrained(name, **kw)
        pruned = getattr(config, "pruned_heads", None) or {}
        if not pruned:
            return AutoModelForSequenceClassification.from_pretrained(name, config=config)
        # Rebuild at full size, remove the recorded heads, then load the saved (smaller) weights.
        config.pruned_heads = {}
        model = AutoModelForSequenceClassification.from_config(config)
        prune_heads(model, {int(k): v for k, v in pruned.items()})
        load_weights(model, Path(name))
        return model
    except OSError as e:
        raise UserError(f"--model {name}: cannot load it ({str(e).splitlines()[0]}); give a local folder made by "
                        "save_pretrained, or a hub id on a machine that reaches the hub") from None


def keep_layers(model, n: int) -> None:
    """Keep only the first n encoder layers; the config then says n layers."""
    layers = encoder_layers(model)
    if not 1 <= n <= len(layers):
        raise UserError(f"--keep-layers {n}: the model has {len(layers)} encoder layers")
    model.base_model.encoder.layer = layers[:n]
    model.config.num_hidden_layers = n


def choose_heads(num_layers: int, num_heads: int, fraction: float, seed: int) -> dict[int, list[int]]:
    """round(fraction × all heads) heads drawn uniformly at random over the whole model with `seed`,
    never every head of one layer: heads are taken in a seeded random order, skipping a head that
    would be its layer's last. Selection only; `prune_heads` does the removal."""
    total = num_layers * num_heads
    n = round(fraction * total)
    if not 0 < fraction < 1 or n == 0:
        raise UserError(f"--prune-heads {fraction}: give a fraction between 0 and 1 that removes at least one head")
    if n > num_layers * (num_heads - 1):
        raise UserError(f"--prune-heads {fraction} would remove {n} of {total} heads; at most "
                        f"{num_layers * (num_heads - 1)} can go while each layer keeps one")
    pairs = [(layer, head) for layer in range(num_layers) for head in range(num_heads)]
    random.Random(seed).shuffle(pairs)
    chosen: dict[int, list[int]] = {}
    for layer, head in pairs:
        if len(chosen.get(layer, [])) < num_heads - 1:
            chosen.setdefault(layer, []).append(head)
            n -= 1
            if n == 0:
                break
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def prune_heads(model, heads: dict[int, list[int]]) -> None:
    """Remove the given heads ({layer: [head indices of the unpruned layer]}) from the model's
    attention blocks and record them in model.config.pruned_heads. The model must not be pruned yet."""
    if getattr(model.config, "pruned_heads", None):
        raise UserError("the model already has pruned heads; prune a model once, from its unpruned form")
    layers = encoder_layers(model)
    for layer, drop in heads.items():
        attn = layers[layer].attention
        size = attn.self.attention_head_size
        keep = [h for h in range(attn.self.num_attention_heads) if h not in set(drop)]
        index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
        for proj in ("query", "key", "value"):
            setattr(attn.self, proj, prune_linear_layer(getattr(attn.self, proj), index))
        attn.output.dense = prune_linear_layer(attn.output.dense, index, dim=1)
        attn.self.num_attention_heads = len(keep)
        attn.self.all_head_size = len(keep) * size
    model.config.pruned_heads = {str(layer): sorted(drop) for layer, drop in heads.items()}


def freeze_layers(model, n: int) -> None:
    """The first n encoder layers get no gradient (and so no optimizer state); embeddings, the
    other layers, pooler and classifier train."""
    layers = encoder_layers(model)
    if not 0 <= n <= len(layers):
        raise UserError(f"--freeze {n}: the model has {len(layers)} encoder layers")
    for layer in layers[:n]:
        layer.requires_grad_(False)


def apply_experiment(model, keep: int | None, prune: float | None, freeze: int, seed: int) -> dict[int, list[int]]:
    """The study's ablations in their one order: keep the first `keep` layers, then remove a
    `prune` fraction of the heads (chosen at random with `seed`), then freeze the first `freeze`
    layers. Returns the removed heads ({layer: [heads]}, empty when none)."""
    if keep:
        keep_layers(model, keep)
    heads = {}
    if prune:
        heads = choose_heads(len(encoder_layers(model)), model.config.num_attention_heads, prune, seed)
        prune_heads(model, heads)
    freeze_layers(model, freeze)
    return heads
