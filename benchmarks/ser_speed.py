"""Training throughput of `ser.train` (clips/s and audio-seconds/s) with the real HuBERT-base shape.

    python -m benchmarks.ser_speed [--model DIR] [--clips 60] [--epochs 1] [--json FILE]
        [-- extra ser.train flags, e.g. --batch-size 8 --cuda-graphs off]

HubertConfig() (7 conv layers with group norm, 12 transformer layers, 768 wide) with random weights,
saved once under .bench/; --clips ShEMO-named clips of noise at 16 kHz, lengths as ShEMO's (log-normal
around 3.5 s, mean about 4 s, 0.5 to 20 s); then `python -m ser.train --no-balance`, printing
metrics.json's figures.
"""
import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.nli_speed import ROOT, parse, report, timed


def hubert_base_shaped() -> Path:
    from transformers import HubertConfig, HubertModel
    folder = ROOT / ".bench" / "hubert-base-random"
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        HubertModel(HubertConfig()).save_pretrained(folder)
    return folder


def shemo_like_clips(folder: Path, n: int, seed: int = 0) -> float:
    """n clips named like ShEMO's, 6 emotions in turn; returns their mean length in seconds."""
    import soundfile as sf
    rng = np.random.default_rng(seed)
    secs = np.clip(rng.lognormal(math.log(3.5), 0.55, n), 0.5, 20.0)
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(secs):
        wave = (0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32)
        sf.write(folder / f"{'FM'[i % 2]}{i % 7 + 1:02d}{'AFHNSW'[i % 6]}{i:02d}.wav", wave, 16000)
    return float(secs.mean())


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ser_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=60, help="clips written (80%% of them are trained on)")
    p.add_argument("--epochs", type=int, default=1, help="epochs over the training clips")
    a, extra = parse(p, argv)
    from ser.train import main as train
    model = a.model or hubert_base_shaped()
    with tempfile.TemporaryDirectory(prefix="ser-bench-", ignore_cleanup_errors=True) as work:
        mean_s = shemo_like_clips(Path(work) / "clips", a.clips)
        speed, cfg, _, result = timed(train, ["--model", str(model), "--data-dir", str(Path(work) / "clips"),
                                              "--no-balance"], Path(work), a, extra)
    clips = cfg["derived"]["clips"]
    report({"clips_per_s": speed["items_per_s"], "audio_seconds_per_s": speed["audio_seconds_per_s"],
            "clips_per_s_steady": speed["items_per_s_steady"],
            "audio_seconds_per_s_steady": speed["audio_seconds_per_s_steady"],
            "warmup_audio_seconds": speed["warmup_audio_seconds"], "eval_clips": clips["val"] + clips["test"],
            **result, "train_clips": clips["train"], "mean_clip_seconds": round(mean_s, 2)}, a.json)


if __name__ == "__main__":
    main()
