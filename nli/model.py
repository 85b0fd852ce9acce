"""ParsBERT (any BERT-family encoder) for pair classification, and the study's ablations: keep
the first N layers, remove attention heads (for real) or mask weights as the study did, freeze.

transformers 5.x removed `prune_heads`: heads are removed here by slicing each attention block's
query/key/value rows and output projection's columns (`prune_linear_layer`); its attention code
reshapes with `view(..., -1, head_size)`, so every backend infers the smaller head count. The
removed heads go to the config as `pruned_heads`, from which `load_classifier` rebuilds the shapes.
"""
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification
from torch.nn.utils import prune
from transformers.pytorch_utils import prune_linear_layer

from common.errors import UserError


def encoder_layers(model) -> torch.nn.ModuleList:
    return model.base_model.encoder.layer


def load_classifier(name: str, label_names: list[str] | None = None):
    """A sequence classifier from a hub id or a save_pretrained folder: with `label_names`, a fresh head with
    those names (training), else the folder's own, which must be a sequence classifier (prediction). A config
    that lists `pruned_heads` is built at full size and pruned before its (smaller) weights are loaded."""
    kw = {} if label_names is None else {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                                         "label2id": {n: i for i, n in enumerate(label_names)}}
    try:
        config = AutoConfig.from_pretrained(name, **kw)
        archs, head = getattr(config, "architectures", None) or [], getattr(config, "classifier_head", None)
        if label_names is None and (head or not any(a.endswith("ForSequenceClassification") for a in archs)):
            what = "ser.train's emotion model" if head else \
                f"a {config.model_type} model ({', '.join(archs) or 'no architecture'})"
            raise UserError(f"--model {name} is {what}, not a premise/hypothesis classifier written by nli.train")
        pruned = getattr(config, "pruned_heads", None) or {}
        if not pruned:
            return AutoModelForSequenceClassification.from_pretrained(name, config=config)
        config.pruned_heads = {}
        model = AutoModelForSequenceClassification.from_config(config)
        prune_heads(model, {int(k): v for k, v in pruned.items()})
        # (one file: save_pretrained shards only above 50 GB)
        model.load_state_dict(load_file(Path(name) / "model.safetensors"), strict=True)
        return model
    except OSError as e:
        raise UserError(f"--model {name}: cannot load it ({str(e).splitlines()[0]}); give a local folder made by "
                        "save_pretrained, or a hub id on a machine that reaches the hub") from None
    except ValueError as e:  # (a model type without a sequence classifier in transformers: HuBERT's, say)
        raise UserError(f"--model {name} is not a text classifier ({str(e).splitlines()[0]})") from None


def keep_layers(model, n: int) -> None:
    """Keep only the first n encoder layers; the config then says n layers."""
    layers = encoder_layers(model)
    if not 1 <= n <= len(layers):
        raise UserError(f"--keep-layers {n}: the model has {len(layers)} encoder layers")
    model.base_model.encoder.layer = layers[:n]
    model.config.num_hidden_layers = n


def count_to_remove(fraction: float, total: int, layers: int) -> int:
    """round(fraction × heads), checked: at least one head goes, and each layer keeps one."""
    n = round(fraction * total)
    if not 0 < fraction < 1 or n == 0:
        raise UserError(f"--prune-heads {fraction}: give a fraction between 0 and 1 that removes at least one head")
    if n > total - layers:
        raise UserError(f"--prune-heads {fraction} would remove {n} of {total} heads; at most {total - layers} can "
                        "go while each layer keeps one")
    return n


def choose_heads(num_layers: int, num_heads: int, fraction: float, seed: int) -> dict[int, list[int]]:
    """round(fraction × all heads) heads in a random order fixed by `seed`, never a layer's last (selection only)."""
    n = count_to_remove(fraction, num_layers * num_heads, num_layers)
    pairs = [(layer, head) for layer in range(num_layers) for head in range(num_heads)]
    random.Random(seed).shuffle(pairs)
    position = {pair: k for k, pair in enumerate(pairs)}  # as scores: the lowest first
    return choose_by_importance({layer: {head: position[layer, head] for head in range(num_heads)}
                                 for layer in range(num_layers)}, n)


def choose_by_importance(scores: dict[int, dict[int, float]], n: int) -> dict[int, list[int]]:
    """The n lowest-scoring heads of `scores` ({layer: {head: score}}; ties: lower layer, then
    lower head first), never a layer's last remaining head. Selection only."""
    left = {layer: len(heads) for layer, heads in scores.items()}
    chosen: dict[int, list[int]] = {}
    for _, layer, head in sorted((s, layer, h) for layer, heads in scores.items() for h, s in heads.items()):
        if n == 0:
            break
        if left[layer] > 1:
            chosen.setdefault(layer, []).append(head)
            left[layer] -= 1
            n -= 1
    if n:
        raise UserError(f"cannot remove that many heads while each of {len(left)} layers keeps one")
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def prune_heads(model, heads: dict[int, list[int]]) -> None:
    """Remove heads ({layer: [heads]}, numbered as in the unpruned model, also when some are gone
    already) from the attention blocks; model.config.pruned_heads records every removed head."""
    done = {int(k): set(v) for k, v in (getattr(model.config, "pruned_heads", None) or {}).items()}
    layers = encoder_layers(model)
    for layer, drop in heads.items():
        attn = layers[layer].attention
        size = attn.self.attention_head_size
        present = [h for h in range(model.config.num_attention_heads) if h not in done.get(layer, set())]
        if set(drop) - set(present):
            raise UserError(f"layer {layer}: heads {sorted(set(drop) - set(present))} are already removed")
        keep = [k for k, h in enumerate(present) if h not in set(drop)]  # positions in the current matrices
        if not keep:
            raise UserError(f"layer {layer}: removing heads {sorted(drop)} would leave it no head")
        index = torch.cat([torch.arange(k * size, (k + 1) * size) for k in keep])
        for proj in ("query", "key", "value"):
            setattr(attn.self, proj, prune_linear_layer(getattr(attn.self, proj), index))
        attn.output.dense = prune_linear_layer(attn.output.dense, index, dim=1)
        attn.self.num_attention_heads = len(keep)
        attn.self.all_head_size = len(keep) * size
        done.setdefault(layer, set()).update(drop)
    model.config.pruned_heads = {str(layer): sorted(h) for layer, h in sorted(done.items()) if h}


def mask_attention_weights(model, fraction: float) -> dict:
    """The study's described pruning (docs/nli.md): `prune.random_unstructured` on every "attention*weight"
    parameter, kept at zero through training; returns what was masked: tensors, entries, masked entries."""
    targets = [name for name, _ in model.named_parameters() if "attention" in name and name.endswith("weight")]
    if not targets:
        raise UserError("the model has no parameter whose name contains 'attention' and ends in 'weight' to mask")
    if not any(round(fraction * model.get_parameter(name).numel()) for name in targets):  # (torch's own count)
        raise UserError(f"--prune-heads {fraction}: give a fraction between 0 and 1 that masks at least one entry "
                        "(it rounds to none of each attention weight's entries)")
    for name in targets:
        prune.random_unstructured(model.get_submodule(name.rsplit(".", 1)[0]), "weight", amount=fraction)
    masks = [model.get_submodule(name.rsplit(".", 1)[0]).weight_mask for name in targets]
    total = sum(m.numel() for m in masks)
    masked = sum(int((m == 0).sum()) for m in masks)
    return {"tensors": len(targets), "entries": total, "masked": masked, "fraction": masked / total}


def make_masks_permanent(model) -> None:
    """Fold prune's masks into the weights, so the model saves and reloads as a plain one."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


def freeze_layers(model, n: int) -> None:
    """The first n encoder layers get no gradient (and so no optimizer state)."""
    layers = encoder_layers(model)
    if not 0 <= n <= len(layers):
        raise UserError(f"--freeze {n}: the model has {len(layers)} encoder layers")
    for layer in layers[:n]:
        layer.requires_grad_(False)


@dataclass
class Applied:
    """What an experiment did: the heads removed ({layer: [heads]}, numbered as in the unpruned
    model), their scores (--prune-by importance), and what masking masked (--prune-by masking)."""
    pruned_heads: dict = field(default_factory=dict)
    head_scores: dict | None = None
    masked_weights: dict | None = None


def apply_experiment(model, experiment, seed: int, importance=None) -> Applied:
    """Keep layers, then remove heads (or mask weights), then freeze; heads drawn with `seed`, or the
    lowest by `importance` (model -> {layer: {head: score}}) when given."""
    if experiment.keep_layers:
        keep_layers(model, experiment.keep_layers)
    done = Applied()
    if experiment.prune_heads and experiment.prune_by == "masking":
        done.masked_weights = mask_attention_weights(model, experiment.prune_heads)
    elif experiment.prune_heads:
        layers, per_layer = len(encoder_layers(model)), model.config.num_attention_heads
        if importance is None:
            done.pruned_heads = choose_heads(layers, per_layer, experiment.prune_heads, seed)
        else:
            done.head_scores = importance(model)
            done.pruned_heads = choose_by_importance(done.head_scores, count_to_remove(
                experiment.prune_heads, layers * per_layer, layers))
        prune_heads(model, done.pruned_heads)
    freeze_layers(model, experiment.freeze)
    return done


def uses_sdpa(model) -> bool:
    """Whether the model attends with SDPA (then batches carry a ready 4D boolean mask: nli/data.py)."""
    return model.config._attn_implementation == "sdpa"


def forward(model):
    """The task's model call on one batch of device tensors: BERT pair classification logits."""
    return lambda b: model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                           attention_mask=b["attention_mask"]).logits
