"""Predict the emotion of audio files with a model trained by `ser.train`.

    python -m ser.predict --model runs/ser/leak-free-random/seed0/model clip.wav other.mp3 ...

Each file is read as in training and padded as evaluation pads it; prints its emotion and every
label's probability. A file that cannot be used gets a message naming it, and the exit status is 1.
"""
import argparse
import sys

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from common.errors import user_errors
from ser.audio import MAX_SECONDS, SAMPLE_RATE, crop_long, normalize, pad_short, read_audio
from ser.data import collate
from ser.model import load_classifier


@torch.inference_mode()
def classify(model, fe, wave: np.ndarray) -> torch.Tensor:
    """Probabilities for one clip, alone in its batch, padded to whole seconds as in evaluation."""
    x = normalize(pad_short(crop_long(wave)), fe.do_normalize)
    b = collate([x], [0], torch.zeros(1, dtype=torch.long), float(fe.padding_value), torch.device("cpu"))
    return model(b["input_values"], b["lengths"]).float().softmax(-1)[0]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ser.predict", description="Classify the emotion of audio files.")
    p.add_argument("--model", required=True, help="model/ folder written by ser.train")
    p.add_argument("files", nargs="+", metavar="FILE")
    a = p.parse_args(argv)
    hf_logging.disable_progress_bar()
    with user_errors():
        model, fe, label_names = load_classifier(a.model)
        failed = 0
        for path in a.files:
            try:
                wave = read_audio(path)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                failed += 1
                continue
            probs = classify(model, fe, wave)
            cut = f"  [its first {MAX_SECONDS:g} s of {len(wave) / SAMPLE_RATE:.1f} s]" \
                if len(wave) > MAX_SECONDS * SAMPLE_RATE else ""
            print(f"{path}: {label_names[int(probs.argmax())]}  (" +
                  ", ".join(f"{n} {q:.3f}" for n, q in zip(label_names, probs.tolist())) + ")" + cut, flush=True)
        if failed:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
