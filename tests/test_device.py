"""common/device.py's precision choice, through the training CLI: fp16 autocast with a GradScaler
(the branch for GPUs without bf16) also runs on the CPU, so its step, its scaler state in the
checkpoint and its resume are tested here."""
import json

import pytest
import torch
from safetensors.torch import load_file

from nli.train import main as nli_main
from tests.conftest import interrupt_at_epoch


def run(model, data, out, *extra):
    nli_main(["--model", str(model), "--data-dir", str(data), "--out", str(out), "--limit", "16", "--batch-size", "8",
              "--lr", "1e-3", "--epochs", "3", "--device", "cpu", *map(str, extra)])
    return load_file(out / "model" / "model.safetensors"), json.loads((out / "metrics.json").read_text())


def test_fp16_with_a_grad_scaler_trains_like_fp32_and_resumes_bit_identical(tiny_bert_no_dropout, farstail_dir,
                                                                              tmp_path, monkeypatch):
    fp32, m32 = run(tiny_bert_no_dropout, farstail_dir, tmp_path / "fp32", "--amp", "off")
    fp16, m16 = run(tiny_bert_no_dropout, farstail_dir, tmp_path / "fp16", "--amp", "fp16")
    config = json.loads((tmp_path / "fp16" / "config.json").read_text())
    assert config["derived"]["precision"] == "fp16"
    # fp16 rounding, not another recipe: the same losses to about fp16's precision, weights moved alike
    assert m16["train"]["loss"] == pytest.approx(m32["train"]["loss"], rel=2e-2)
    assert m16["val"]["loss"] == pytest.approx(m32["val"]["loss"], rel=2e-2)
    assert all(torch.isfinite(w).all() for w in fp16.values())
    moved = [k for k in fp32 if "encoder.layer.0.attention.self.query.weight" in k]
    start = load_file(tiny_bert_no_dropout / "model.safetensors")
    for k in moved:
        ours, ref = fp16[k] - start[k], fp32[k] - start[k]
        assert torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0) > 0.9
    # an interrupted fp16 run (model, AdamW and scaler restored from the checkpoint) resumes to the same weights
    undo = interrupt_at_epoch(monkeypatch, 3)
    with pytest.raises(SystemExit, match="^130$"):
        run(tiny_bert_no_dropout, farstail_dir, tmp_path / "cut", "--amp", "fp16")
    undo()
    resumed, _ = run(tiny_bert_no_dropout, farstail_dir, tmp_path / "cut", "--amp", "fp16", "--resume")
    assert all(torch.equal(fp16[k], resumed[k]) for k in fp16)


def test_the_device_tables_command_line_refuses_what_is_not_its_folder(tmp_path, capsys):
    from benchmarks.table import main as table
    for argv in (["--help"], [str(tmp_path / "missing")], []):
        with pytest.raises(SystemExit) as e:
            table(argv)
        assert e.value.code == 2 and "usage: python -m benchmarks.table OUT" in capsys.readouterr().err
