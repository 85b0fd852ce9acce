"""Pinned numbers: one tiny, deterministic NLI run (gradient accumulation, 2 epochs) and one SER
run through the command line, compared with values stored in tests/pinned.json, so that a change
that moves every run the same way (a schedule, a loss weighting, a batch order, a split) is seen,
as torchtune's recipe tests pin their losses.

Fixed: one CPU thread (reductions add in another order with more threads), the seeds, the
generated data and the tiny models (built from configs with a seeded initialisation). The SER run
makes no augmented copies, so the numbers depend on torch and transformers only; the study
protocol's split (which items, which copies with which pitch and stretch) is pinned from its
split.csv without its training numbers, which would also depend on librosa's version.

Tolerance: losses, and each weight tensor's sum and norm, within 1e-4 of max(|pinned|, 1)
(different CPUs' vector kernels round differently; a real change moves them far more);
accuracies within one item. Key biases are left out: their gradient is zero in exact arithmetic,
and Adam turns the rounding noise into steps of about ±lr, which differ from CPU to CPU.
To pin new numbers on purpose: `PIN=1 python -m pytest tests/test_pinned.py`, and say why in the commit.
"""
import csv
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nli.train
import ser.train
from ser.synthetic import write_shemo

PINNED = Path(__file__).with_name("pinned.json")
RTOL = 1e-4


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def figures(out: Path) -> dict:
    """What is pinned of a run: per-epoch losses and accuracies, final accuracies, weight sums."""
    history = list(csv.DictReader(open(out / "history.csv")))
    m = json.loads((out / "metrics.json").read_text())
    weights = load_file(out / "model" / "model.safetensors")
    return {"train_loss": [float(r["train_loss"]) for r in history],
            "val_loss": [float(r["val_loss"]) for r in history],
            "val_accuracy": [float(r["val_accuracy"]) for r in history],
            "test_accuracy": [float(r["test_accuracy"]) for r in history],
            "test_loss": m["test"]["loss"],
            "items": {k: sum(v["support"] for v in m[k]["per_class"].values()) for k in ("val", "test")},
            "weights": {k: [float(v.double().sum()), float(v.double().norm())] for k, v in sorted(weights.items())
                        if not k.endswith(("key.bias", "k_proj.bias"))}}  # (see below)


def split_digest(out: Path) -> dict:
    """The study protocol's split as split.csv records it: items per split and a digest of the rows."""
    rows = list(csv.DictReader(open(out / "split.csv", encoding="utf-8")))
    text = "\n".join(f"{r['split']},{r['label']},{r['speaker']},{Path(r['path']).name},{r['augmentation']},"
                     f"{r['source_also_in']}" for r in rows)
    return {"items": {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")},
            "sha256": hashlib.sha256(text.encode()).hexdigest()}


def compare(got, want, where: str, tolerance: float):
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            compare(got[k], want[k], f"{where}.{k}", tolerance)
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            compare(a, b, f"{where}[{i}]", tolerance)
    elif isinstance(want, float):
        assert abs(got - want) <= tolerance * max(abs(want), 1.0), f"{where}: {got} now, {want} pinned"
    else:
        assert got == want, f"{where}: {got} now, {want} pinned"


def test_pinned_numbers(tiny_bert, farstail_dir, tiny_hubert, tmp_path, one_thread):
    nli.train.main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(tmp_path / "nli"),
                    "--epochs", "2", "--batch-size", "4", "--grad-accum", "2", "--lr", "1e-3", "--seed", "7",
                    "--limit", "32"])
    write_shemo(tmp_path / "shemo", per_class={"A": 8, "N": 6, "S": 4}, speakers=4, seed=3)
    ser.train.main(["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "shemo"), "--out",
                    str(tmp_path / "ser"), "--epochs", "2", "--lr", "1e-3", "--seed", "5", "--no-balance",
                    "--batch-size", "2", "--grad-accum", "2"])
    ser.train.main(["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "shemo"), "--out",
                    str(tmp_path / "study"), "--epochs", "1", "--protocol", "study", "--seed", "5",
                    "--cache-dir", str(tmp_path / "cache")])
    got = {"nli": figures(tmp_path / "nli"), "ser": figures(tmp_path / "ser"),
           "study_split": split_digest(tmp_path / "study")}
    if os.environ.get("PIN") == "1":
        PINNED.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"pinned new numbers in {PINNED}")
    want = json.loads(PINNED.read_text())
    for run in ("nli", "ser"):
        g, w = got[run], want[run]
        for key in ("train_loss", "val_loss", "test_loss", "weights"):
            compare(g[key], w[key], f"{run}.{key}", RTOL)
        for key in ("val_accuracy", "test_accuracy"):
            n = g["items"][key.split("_")[0]]
            assert all(abs(a - b) <= 1 / n + 1e-9 for a, b in zip(g[key], w[key])), (run, key, g[key], w[key])
        assert g["items"] == w["items"], run
    assert got["study_split"] == want["study_split"]
