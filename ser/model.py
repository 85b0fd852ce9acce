"""HuBERT (or any wav2vec2-style encoder) → mean over time, padded frames left out → Linear(hidden, C)
→ Linear(C, C), as in the study; saving and reloading it. LayerDrop and SpecAugment are drawn on the
device, which a CUDA graph replays afresh (docs/ser.md, "HuBERT's own randomness")."""
import copy
import functools
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

from common.distributed import all_reduce
from common.errors import UserError
from common.outdir import model_of_run


def masked_mean(hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean over time of hidden (batch, time, dim), counting only the first frames[b] steps of row b."""
    keep = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]).to(hidden.dtype)
    return (hidden * keep[..., None]).sum(1) / frames[:, None].to(hidden.dtype)


def span_mask(lengths: torch.Tensor, width: int, prob: float, span: int, min_spans: int) -> torch.Tensor:
    """SpecAugment spans, drawn on the device: (rows, width) booleans. Row b gets
    n = max(floor(prob * lengths[b] / span + u), min_spans) spans (u ~ U(0, 1), one draw per
    batch, as transformers), no more than fit in its length, each starting uniformly in
    [0, lengths[b] - span]. Shapes depend only on `width`, so a CUDA graph can replay it."""
    device = lengths.device
    most = max(min_spans, int(prob * width / span + 1))  # a bound on n for any length <= width
    lengths = lengths.float()
    room = (lengths - span + 1).clamp(min=0)
    n = torch.floor(prob * lengths / span + torch.rand((), device=device)).clamp(min=min_spans)
    n = torch.minimum(n, room).clamp(max=width // span)
    starts = torch.floor(torch.rand(len(lengths), most, device=device) * room[:, None])
    active = torch.arange(most, device=device)[None, :] < n[:, None]
    pos = torch.arange(width, device=device)
    inside = (pos >= starts[..., None]) & (pos < starts[..., None] + span) & active[..., None]
    return inside.any(1)


class EmotionClassifier(nn.Module):
    def __init__(self, encoder, num_labels: int, use_attention_mask: bool):
        super().__init__()
        self.hubert = encoder
        self.fc1 = nn.Linear(encoder.config.hidden_size, num_labels)
        self.fc2 = nn.Linear(num_labels, num_labels)
        self.use_attention_mask = use_attention_mask
        cfg = encoder.config
        self.layerdrop = cfg.layerdrop
        self.spec_augment = getattr(cfg, "apply_spec_augment", True)
        # transformers' own host-side LayerDrop off (its encoder reads this copy of the config);
        # ours runs as a hook after each layer. The saved config keeps the real value.
        encoder.encoder.config = copy.copy(cfg)
        encoder.encoder.config.layerdrop = 0.0
        self.kept = None  # per encoder layer, 1 once it ran (was not dropped) since the last optimizer step
        for i, layer in enumerate(encoder.encoder.layers):
            layer.register_forward_hook(functools.partial(self._layerdrop, i))

    def _layerdrop(self, i: int, layer, args, output):
        """With probability config.layerdrop (training only), layer i's output is its input."""
        if not (self.training and self.layerdrop > 0):
            return output
        out = output[0] if isinstance(output, tuple) else output
        keep = torch.rand((), device=out.device) >= self.layerdrop
        if self.kept is None:
            self.kept = torch.zeros(len(self.hubert.encoder.layers), device=out.device)
        self.kept[i] = torch.maximum(self.kept[i], keep.float())
        out = torch.where(keep, out, args[0])
        return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

    def restore_dropped_layers(self, optimizer) -> None:
        """After each optimizer step, a layer dropped in all of the step's passes (on every process) gets
        back its weights and AdamW state, as in transformers; device work only, so a CUDA graph replays it."""
        if self.layerdrop <= 0:
            return
        mine = {id(p) for group in optimizer.param_groups for p in group["params"]}
        layers = [[p for p in layer.parameters() if id(p) in mine] for layer in self.hubert.encoder.layers]
        saved = {}  # id(param) -> its value, then its AdamW state tensors, before the step

        def tensors(p) -> list:
            state = optimizer.state.get(p, {})
            return [p] + [state[k] for k in sorted(state) if torch.is_tensor(state[k])]

        @torch.no_grad()
        def before(*_):
            if self.training and self.kept is not None:
                now = [tensors(p) for ps in layers for p in ps]
                for p, ts in zip((p for ps in layers for p in ps), now):
                    if len(saved.get(id(p), ())) != len(ts):  # the first step, or state made anew
                        saved[id(p)] = [torch.empty_like(t) for t in ts]
                torch._foreach_copy_([t for ps in layers for p in ps for t in saved[id(p)]],
                                     [t for ts in now for t in ts])

        @torch.no_grad()
        def after(*_):
            if self.training and self.kept is not None:
                dropped = 1 - all_reduce(self.kept, "max")  # a layer any process ran has gradients
                for i, ps in enumerate(layers):
                    now = [tensors(p) for p in ps]
                    # state AdamW made in this step was, before it, no state: zeros
                    old = [saved[id(p)] + [torch.zeros_like(t) for t in ts[len(saved[id(p)]):]]
                           for p, ts in zip(ps, now)]
                    flat = [t for ts in now for t in ts]  # (a weight per tensor: a lone one is read on the host)
                    torch._foreach_lerp_(flat, [t for o in old for t in o], [dropped[i]] * len(flat))
                self.kept.zero_()

        optimizer.register_step_pre_hook(before)
        optimizer.register_step_post_hook(after)

    def _mask(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """SpecAugment on the projected features (training only), time axis then feature axis."""
        cfg = self.hubert.config
        if not (self.training and self.spec_augment):
            return hidden
        if cfg.mask_time_prob > 0:
            m = span_mask(frames, hidden.shape[1], cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_time_min_masks)
            hidden = torch.where(m[..., None], self.hubert.masked_spec_embed.to(hidden.dtype), hidden)
        if cfg.mask_feature_prob > 0:
            width = torch.full_like(frames, hidden.shape[2])
            m = span_mask(width, hidden.shape[2], cfg.mask_feature_prob, cfg.mask_feature_length,
                          cfg.mask_feature_min_masks)
            hidden = hidden.masked_fill(m[:, None, :], 0.0)
        return hidden

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """HubertModel.forward written out, with SpecAugment drawn on the device; lengths: real sample counts."""
        h = self.hubert
        frames = h._get_feat_extract_output_lengths(lengths)
        features = h.feature_extractor(input_values).transpose(1, 2)
        mask = None
        if self.use_attention_mask:
            samples = (torch.arange(input_values.shape[1], device=lengths.device)[None, :] < lengths[:, None]).long()
            mask = h._get_feature_vector_attention_mask(features.shape[1], samples)
        hidden = h.feature_projection(features)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # wav2vec2's also returns the normed features
        hidden = h.encoder(self._mask(hidden, frames), attention_mask=mask).last_hidden_state
        return self.fc2(self.fc1(masked_mean(hidden, frames)))


def forward(model):
    """The task's model call on one batch of device tensors: emotion logits."""
    return lambda b: model(b["input_values"], b["lengths"])


STUDY_EXTRACTOR = ("the study's: facebook/wav2vec2-base-960h's settings (16 kHz, padding value 0, do_normalize=True, "
                   "no attention mask), built in code (no hub here); we normalise each clip before padding")


def study_feature_extractor() -> Wav2Vec2FeatureExtractor:
    """The study's extractor (STUDY_EXTRACTOR), which normalised each padded row; ours is called per clip."""
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=False)


def feature_extractor_for(model: str, explicit: str | None = None, study: bool = False
                          ) -> tuple[Wav2Vec2FeatureExtractor, str]:
    """(extractor, where it came from): --feature-extractor; else the study's under its protocol; else the
    model's own, else the study's."""
    if explicit:
        try:
            fe, source = AutoFeatureExtractor.from_pretrained(explicit), explicit
        except (OSError, ValueError) as e:
            raise UserError(f"--feature-extractor {explicit}: cannot load it ({str(e).splitlines()[0]})") from None
    elif study:
        fe, source = study_feature_extractor(), STUDY_EXTRACTOR
    else:
        try:
            fe, source = AutoFeatureExtractor.from_pretrained(model), f"{model} (the model's own)"
        except (OSError, ValueError):
            fe, source = study_feature_extractor(), "the model has none: " + STUDY_EXTRACTOR
    if fe.sampling_rate != 16000:
        raise UserError(f"feature extractor {source} expects {fe.sampling_rate} Hz; this pipeline feeds 16 kHz")
    return fe, source


def build_classifier(model: str, label_names: list[str], use_attention_mask: bool) -> EmotionClassifier:
    """A fresh classification head on a pretrained encoder (hub id or save_pretrained folder)."""
    try:
        hubert = AutoModel.from_pretrained(model)
    except OSError as e:
        raise UserError(f"--model {model}: cannot load it ({str(e).splitlines()[0]}); give a local folder made "
                        "by save_pretrained, or a hub id on a machine that reaches the hub") from None
    return EmotionClassifier(hubert, len(label_names), use_attention_mask)


def save_classifier(model: EmotionClassifier, fe, label_names: list[str], folder: Path) -> None:
    """Config (with label names and head), weights (safetensors) and feature extractor: load_classifier's input."""
    folder.mkdir(parents=True, exist_ok=True)
    config = model.hubert.config
    config.id2label = dict(enumerate(label_names))
    config.label2id = {n: i for i, n in enumerate(label_names)}
    config.classifier_head = "mean over time (padding excluded) -> Linear(hidden, C) -> Linear(C, C)"
    config.save_pretrained(folder)
    fe.save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_classifier(folder: str) -> tuple[EmotionClassifier, object, list[str]]:
    """(model in eval mode, feature extractor, label names) from save_classifier's folder or a run's."""
    path = model_of_run(folder, "ser.train")
    config = AutoConfig.from_pretrained(path)
    if not getattr(config, "classifier_head", None) or not (path / "model.safetensors").exists():
        raise UserError(f"--model {folder} is not an emotion model written by ser.train (its config is a "
                        f"{config.model_type} model's, with no classifier_head)")
    label_names = [config.id2label[i] for i in range(len(config.id2label))]
    fe, _ = feature_extractor_for(str(path))
    model = EmotionClassifier(AutoModel.from_config(config), len(label_names), bool(fe.return_attention_mask))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval(), fe, label_names

