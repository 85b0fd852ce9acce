"""HuBERT (or any wav2vec2-style encoder) → mean over time, padded frames left out →
Linear(hidden, C) → Linear(C, C), as in the study; plus saving and reloading that model.

Attention masks follow the feature extractor: HuBERT-base (group-norm feature encoder,
`return_attention_mask=False`) was trained without one, so padded batches are zero-padded and
passed no mask; layer-norm encoders whose extractor says `return_attention_mask=True` get it.
Either way the mean over time counts only each clip's own frames (from the convolution output
lengths). With a mask and a layer-norm encoder a clip's pooled vector does not change when
padding is appended; group norm normalises over the whole padded length, so there a clip's
output still depends a little on the padding, which is why evaluation runs in a fixed order.
"""
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

from common.run import UserError


def masked_mean(hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean over time of hidden (batch, time, dim), counting only the first frames[b] steps of row b."""
    keep = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]).to(hidden.dtype)
    return (hidden * keep[..., None]).sum(1) / frames[:, None].to(hidden.dtype)


class EmotionClassifier(nn.Module):
    def __init__(self, hubert, num_labels: int, use_attention_mask: bool):
        super().__init__()
        self.hubert = hubert
        self.fc1 = nn.Linear(hubert.config.hidden_size, num_labels)
        self.fc2 = nn.Linear(num_labels, num_labels)
        self.use_attention_mask = use_attention_mask

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_values: (batch, samples), zero-padded; lengths: each clip's real sample count."""
        mask = None
        if self.use_attention_mask:
            mask = (torch.arange(input_values.shape[1], device=lengths.device)[None, :] < lengths[:, None]).long()
        hidden = self.hubert(input_values, attention_mask=mask).last_hidden_state
        frames = self.hubert._get_feat_extract_output_lengths(lengths)
        return self.fc2(self.fc1(masked_mean(hidden, frames)))


def study_feature_extractor() -> Wav2Vec2FeatureExtractor:
    """The study's settings (borrowed from facebook/wav2vec2-base-960h): 16 kHz, zero-mean
    unit-variance per clip, zero padding, no attention mask."""
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=False)


def feature_extractor_for(model: str, explicit: str | None = None) -> tuple[Wav2Vec2FeatureExtractor, str]:
    """The feature extractor named by --feature-extractor, else the model's own, else the study's.
    Returns it and a description of where it came from (written to config.json)."""
    if explicit:
        try:
            fe, source = AutoFeatureExtractor.from_pretrained(explicit), explicit
        except (OSError, ValueError) as e:
            raise UserError(f"--feature-extractor {explicit}: cannot load it ({str(e).splitlines()[0]})") from None
    else:
        try:
            fe, source = AutoFeatureExtractor.from_pretrained(model), f"{model} (the model's own)"
        except (OSError, ValueError):
            fe, source = study_feature_extractor(), "study default (wav2vec2-base-960h settings)"
    if fe.sampling_rate != 16000:
        raise UserError(f"feature extractor {source} expects {fe.sampling_rate} Hz; this pipeline feeds 16 kHz")
    return fe, source


def build_classifier(model: str, labels: list[str], use_attention_mask: bool) -> EmotionClassifier:
    """A fresh classification head on a pretrained encoder (hub id or save_pretrained folder)."""
    try:
        hubert = AutoModel.from_pretrained(model)
    except OSError as e:
        raise UserError(f"--model {model}: cannot load it ({str(e).splitlines()[0]}); give a local folder made "
                        "by save_pretrained, or a hub id on a machine that reaches the hub") from None
    return EmotionClassifier(hubert, len(labels), use_attention_mask)


def save_classifier(model: EmotionClassifier, fe, labels: list[str], folder: Path) -> None:
    """Encoder config (with label names and the head's description), all weights as one
    safetensors file, and the feature extractor: everything load_classifier needs."""
    folder.mkdir(parents=True, exist_ok=True)
    config = model.hubert.config
    config.id2label = dict(enumerate(labels))
    config.label2id = {n: i for i, n in enumerate(labels)}
    config.classifier_head = "mean over time (padding excluded) -> Linear(hidden, C) -> Linear(C, C)"
    config.save_pretrained(folder)
    fe.save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_classifier(folder: str) -> tuple[EmotionClassifier, object, list[str]]:
    """(model in eval mode, feature extractor, label names) from a folder written by save_classifier."""
    path = Path(folder)
    if not (path / "model.safetensors").exists() or not (path / "config.json").exists():
        raise UserError(f"--model {folder}: not a model folder written by ser.train (no model.safetensors/config.json)")
    config = AutoConfig.from_pretrained(path)
    labels = [config.id2label[i] for i in range(len(config.id2label))]
    fe, _ = feature_extractor_for(folder)
    model = EmotionClassifier(AutoModel.from_config(config), len(labels), bool(fe.return_attention_mask))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return model.eval(), fe, labels

