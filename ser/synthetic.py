"""Small stand-ins for the real inputs, for the tests and `run_all.sh --smoke`: a ShEMO-named
folder of generated clips whose emotions differ audibly (pitch and loudness), and a tiny
randomly initialised HuBERT saved with save_pretrained, loadable through `--model DIR`.

    python -m ser.synthetic --data DIR --model DIR [--per-class 10] [--speakers 4] [--uneven]
"""
import argparse
from pathlib import Path

import numpy as np

from common.outdir import claim

# letter -> (tone in Hz, amplitude): each emotion sounds different
VOICES = {"A": (440.0, 0.6), "F": (660.0, 0.15), "H": (550.0, 0.4), "N": (220.0, 0.2), "S": (165.0, 0.1),
          "W": (880.0, 0.5)}


def tone(rng: np.random.Generator, hz: float, amp: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f = hz * (1 + 0.02 * rng.standard_normal())
    wave = amp * np.sin(2 * np.pi * f * t) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    return (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_shemo(folder: Path, per_class: int | dict = 10, speakers: int = 4, rate: int = 16000, seed: int = 0,
                letters: str = "AFHNSW", seconds=(0.4, 2.5)) -> None:
    """ShEMO's layout (female/F01A01.wav, male/...); per_class: one count, or a count per letter."""
    import soundfile as sf
    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, dict) else dict.fromkeys(letters, per_class)
    for letter, n in counts.items():
        for k in range(n):
            gender = "FM"[k % 2]
            speaker = (k // 2) % max(1, speakers // 2) + 1
            sub = folder / ("female" if gender == "F" else "male")
            sub.mkdir(parents=True, exist_ok=True)
            hz, amp = VOICES[letter]
            wave = tone(rng, hz * (1.1 if gender == "F" else 1.0), amp, rng.uniform(*seconds), rate)
            sf.write(sub / f"{gender}{speaker:02d}{letter}{k + 1:02d}.wav", wave, rate)


def tiny_hubert_config(**overrides):
    from transformers import HubertConfig
    return HubertConfig(**{**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
                           **overrides})


def write_tiny_hubert(folder: Path, seed: int = 0, **overrides) -> None:
    """HuBERT-base's layout (7 conv layers, group norm) at tiny widths; no feature extractor config,
    so training falls back to the study's settings, as for the real HuBERT hub folder."""
    import torch
    from transformers import HubertModel
    torch.manual_seed(seed)
    HubertModel(tiny_hubert_config(**overrides)).save_pretrained(folder)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ser.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--speakers", type=int, default=4)
    p.add_argument("--uneven", action="store_true", help="classes of different sizes, as ShEMO's (to show balancing)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if problem := claim([a.data, a.model], "ser.synthetic"):
        p.error(problem)
    n = a.per_class
    counts = {"A": 2 * n, "N": 2 * n, "S": n, "W": n // 2 + 3, "H": n // 2 + 3, "F": n // 4 + 3} if a.uneven else n
    write_shemo(a.data, counts, a.speakers, seed=a.seed)
    write_tiny_hubert(a.model, a.seed)


if __name__ == "__main__":
    main()
