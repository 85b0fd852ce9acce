"""`ser.train --protocol study` against a reference loop written from the study's own code: a
TensorDataset of item indices through a DataLoader at batch 2, the wav2vec2-base-960h feature
extractor called on each batch with padding=True, HuBERT's last hidden state averaged over time,
FC1, FC2, CrossEntropyLoss, AdamW (weight decay 0, our assumption: the study names no optimizer),
zero_grad(set_to_none=True). The loader draws the order ser.train draws (its sampler is ours,
in place of shuffle=True's RandomSampler), so both see the same batches.

On clips of equal whole-second length (no padding either way, so every documented difference in
padding, pooling and normalisation vanishes) and with dropout and SpecAugment off, the per-step
loss and the final weights agree, with LayerDrop off and with it on (transformers' LayerDrop: a
dropped layer is skipped and its gradients stay None, so AdamW leaves its weights and moments
alone; ser/model.py does the same on the device).

    python -m tests.test_ser_reference   # the size of the normalisation difference on unequal clips
"""
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.batching import LengthGroupedBatches
from ser.synthetic import write_shemo, write_tiny_hubert
from ser.train import main

NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  final_dropout=0.0, mask_time_prob=0.0)
EPOCHS, LR, SEED = 2, 2e-3, 0


class StudyModel(nn.Module):
    """The study's classifier: HuBERT -> mean over all frames -> FC1 -> FC2."""

    def __init__(self, hubert, num_classes):
        super().__init__()
        self.hubert = hubert
        self.fc1 = nn.Linear(hubert.config.hidden_size, num_classes)
        self.fc2 = nn.Linear(num_classes, num_classes)

    def forward(self, x):
        return self.fc2(self.fc1(self.hubert(x).last_hidden_state.mean(1)))


def study_loop(model_dir: Path, run: Path, normalise_after_padding: bool = True) -> tuple[list[float], dict, dict]:
    """The study's training loop on ser.train's training split (its split.csv) in ser.train's
    batch order: each step's loss, the final weights and the first. `normalise_after_padding=False`
    normalises each clip before padding it (as ser.train does) instead of the padded row."""
    from transformers import HubertModel, Wav2Vec2FeatureExtractor
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=False)
    rows = [r for r in csv.DictReader(open(run / "split.csv")) if r["split"] == "train"]
    names = json.loads((run / "config.json").read_text())["derived"]["labels"]
    waves = [sf.read(r["path"], dtype="float32")[0] for r in rows]
    if not normalise_after_padding:
        waves = [(w - w.mean()) / np.sqrt(w.var() + 1e-7) for w in waves]
        fe.do_normalize = False
    labels = torch.tensor([names.index(r["label"]) for r in rows])
    torch.manual_seed(SEED)  # ser.train seeds before it builds the model: the same head initialisation
    model = StudyModel(HubertModel.from_pretrained(model_dir), len(names)).train()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()
    data = TensorDataset(torch.arange(len(rows)))
    batches = LengthGroupedBatches([len(w) for w in waves], 2, SEED)
    losses = []
    for epoch in range(1, EPOCHS + 1):
        order = [i for b in batches.epoch(epoch) for i in b]
        # (its own generator: the loader's base seed would otherwise take a draw from the one LayerDrop uses)
        for (idx,) in DataLoader(data, batch_size=2, sampler=order, generator=torch.Generator()):
            x = fe([waves[i] for i in idx], sampling_rate=16000, padding=True, return_tensors="pt").input_values
            loss = loss_fn(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, start


def ours(model_dir: Path, data: Path, run: Path) -> tuple[list[float], dict]:
    """ser.train --protocol study: each step's loss (from steps.csv's running means) and the final weights."""
    main(["--model", str(model_dir), "--data-dir", str(data), "--out", str(run), "--protocol", "study",
          "--epochs", str(EPOCHS), "--lr", str(LR), "--seed", str(SEED), "--log-every", "1"])
    losses = []
    for epoch in range(1, EPOCHS + 1):
        means = [float(r["loss"]) for r in csv.DictReader(open(run / "steps.csv")) if r["epoch"] == str(epoch)]
        losses += [k * m - (k - 1) * p for k, (m, p) in enumerate(zip(means, [0.0] + means), start=1)]
    return losses, load_file(run / "model" / "model.safetensors")


def inputs(folder: Path, seconds, **config) -> tuple[Path, Path]:
    """Three emotions x 6 clips of `seconds` (a range) and a tiny 2-layer HuBERT without dropout."""
    write_shemo(folder / "shemo", per_class=6, speakers=2, letters="ANS", seconds=seconds)
    write_tiny_hubert(folder / "hubert", **{**NO_DROPOUT, **config})
    return folder / "shemo", folder / "hubert"


def compare(a: tuple, study: tuple) -> tuple[float, float]:
    """The largest per-step loss difference, and the size of the weights' difference relative to
    how far the study's loop moved them (L2 norms over every weight)."""
    loss = max(abs(x - y) for x, y in zip(a[0], study[0]))
    norm = lambda d: float(sum((v.double() ** 2).sum() for v in d.values()) ** 0.5)  # noqa: E731
    apart, moved = norm({k: a[1][k] - w for k, w in study[1].items()}), norm({k: w - study[2][k] for k, w in study[1].items()})
    return loss, apart / moved


@pytest.mark.parametrize("layerdrop", [0.0, 0.5])
def test_ser_train_is_the_studys_loop_on_clips_of_equal_length(tmp_path, layerdrop):
    data, model_dir = inputs(tmp_path, (1.0, 1.0), layerdrop=layerdrop)
    mine, theirs = ours(model_dir, data, tmp_path / "run"), study_loop(model_dir, tmp_path / "run")
    assert len(mine[0]) == len(theirs[0]) == 14  # 14 training clips (18, less 2 val and 2 test), 2 epochs
    assert mine[0][-1] < mine[0][0] - 0.1  # it learns: the comparison is not of two idle runs
    # steps.csv rounds its running means to 6 decimals: step k's own loss carries up to 2k x 5e-7
    assert mine[0] == pytest.approx(theirs[0], abs=2e-5)
    # AdamW divides each gradient by its own running size, so where a gradient is ~0 (k_proj's bias) rounding
    # noise moves a weight by up to lr a step; any real difference (LayerDrop's momentum: ~1e-2) is far larger
    assert mine[1].keys() == theirs[1].keys()
    for name, w in theirs[1].items():
        assert torch.allclose(mine[1][name], w, rtol=0, atol=1e-4), name


def measure(folder: Path) -> None:
    """On clips of unequal length (0.5-2.5 s), how far the study's loop moves when its extractor
    normalises each clip before padding instead of the padded row; and, for scale, ours against it."""
    data, model_dir = inputs(folder, (0.5, 2.5))
    mine = ours(model_dir, data, folder / "run")
    study = study_loop(model_dir, folder / "run")
    per_clip = study_loop(model_dir, folder / "run", normalise_after_padding=False)
    for what, a in (("normalised before padding (only that changed)", per_clip), ("ser.train", mine)):
        loss, weights = compare(a, study)
        print(f"{what} against the study's loop over {len(study[0])} steps: largest per-step loss difference "
              f"{loss:.2e} (losses {min(study[0]):.3f}-{max(study[0]):.3f}); weights apart by {weights:.1%} of the "
              "distance the study's loop moved them")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        measure(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
