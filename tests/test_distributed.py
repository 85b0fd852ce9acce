"""One run over two processes with torchrun (DDP, gloo on the CPU): a killed process stops the
job, --resume completes it, and the result has the same weights as one process with the same flags
and only the files rank 0 writes. Weights are compared within 1e-5: the all-reduce adds the two
processes' gradients in another order than one process does, and each process here runs one CPU
thread, not two."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ser.synthetic import write_shemo, write_tiny_hubert

ROOT = Path(__file__).resolve().parent.parent


def torchrun(module: str, *args, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", module,
           *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:  # (a key bias has an exactly-zero gradient; Adam turns its rounding noise into ±lr steps)
        if not k.endswith(("key.bias", "k_proj.bias")):
            assert torch.allclose(wa[k], wb[k], atol=1e-5), (k, (wa[k] - wb[k]).abs().max().item())


def files(run: Path) -> set:
    return {p.relative_to(run).as_posix() for p in run.rglob("*")}


def test_two_processes_train_as_one_a_killed_one_stops_both_and_resume_completes_them(
        tiny_bert_no_dropout, farstail_dir, tmp_path, capsys):
    """49 pairs in optimizer batches of 16 (8 × 2 accumulated): the last batch has one pair, so
    one process gets none of it (zero-weight rows keep its all-reduce in step). The two-process
    run is killed in its last epoch and resumed; it must then equal one process's run."""
    flags = ["--model", tiny_bert_no_dropout, "--data-dir", farstail_dir, "--limit", 49, "--batch-size", 8,
             "--grad-accum", 2, "--epochs", 3, "--lr", "1e-3", "--log-every", 2]
    from nli.train import main
    main([*map(str, flags), "--out", str(tmp_path / "one")])
    two = tmp_path / "two"
    r = torchrun("tests.ddp_kill", *flags, "--out", two, env={"KILL_RANK": "1", "KILL_EPOCH": "3"})
    assert r.returncode != 0
    assert not (two / "metrics.json").exists() and (two / "checkpoint.json").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # one process cannot resume a two-process run: its RNG streams are two
        main([*map(str, flags), "--out", str(two), "--resume"])
    assert e.value.code == 2 and "written by 2 process(es)" in capsys.readouterr().err
    r = torchrun("nli.train", *flags, "--out", two, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (two / "train.log").read_text()
    assert "resuming after epoch 2" in log and log.count("epoch 3:") == 1
    assert "CUDA graphs off (not captured under torchrun/DDP yet)" in log
    same_weights(tmp_path / "one", two)
    assert files(tmp_path / "one") == files(two)  # exactly what one process writes, nothing more
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["train"]["loss"] == pytest.approx(one["train"]["loss"], abs=1e-5)  # summed over both processes
    assert two["test"]["accuracy"] == one["test"]["accuracy"]


def test_ser_two_processes_train_as_one(tmp_path):
    write_tiny_hubert(tmp_path / "hubert", hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                      feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    write_shemo(tmp_path / "data", per_class=5, speakers=2, seconds=(1.0, 1.0))  # one length: padding alike
    # lr 1e-4: Adam scales each weight's step to about lr whatever its gradient, so rounding noise in
    # near-zero gradients (group-normed convolutions) moves weights by up to a few percent of lr
    flags = ["--model", tmp_path / "hubert", "--data-dir", tmp_path / "data", "--batch-size", 4, "--lr", "1e-4",
             "--no-balance", "--epochs", 1]
    r = torchrun("ser.train", *flags, "--out", tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    from ser.train import main
    main([*map(str, flags), "--out", str(tmp_path / "one")])
    same_weights(tmp_path / "one", tmp_path / "two")
    assert files(tmp_path / "one") - {"cache"} == files(tmp_path / "two") - {"cache"}
    assert np.isclose(json.loads((tmp_path / "two" / "metrics.json").read_text())["train"]["loss"],
                      json.loads((tmp_path / "one" / "metrics.json").read_text())["train"]["loss"], atol=1e-5)
