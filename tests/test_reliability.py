"""Faults a user meets, injected through the same command line: damaged checkpoints, two runs
on one folder, a non-finite loss, a disk that fills up, kills at any moment, encodings, and the
ordinary mistakes. Each must end in a correct result or a one-line error with a non-zero exit."""
import csv
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import nli.train
from nli import predict
from nli.train import main as nli_main

ROOT = Path(__file__).resolve().parent.parent


def run_nli(model, data, out, *extra):
    nli_main(["--model", str(model), "--data-dir", str(data), "--out", str(out), "--limit", "16", "--batch-size", "8",
              "--lr", "1e-3", *map(str, extra)])
    return out


def weights(out):
    return load_file(out / "model" / "model.safetensors")


def fails(code, capsys, *args, call=run_nli):
    """Run; expect exit `code` with exactly one error line on stderr (progress bars aside); return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        call(*args)
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert e.value.code == code, err
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def kill_in_epoch(monkeypatch, epoch):
    real = nli.train.train_epoch

    def killed(*a, **kw):
        if a[-1].epoch == epoch:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(nli.train, "train_epoch", killed)
    return lambda: monkeypatch.setattr(nli.train, "train_epoch", real)


@pytest.fixture(scope="module")
def whole(tiny_bert, farstail_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run: the weights every recovered run must end with."""
    return weights(run_nli(tiny_bert, farstail_dir, tmp_path_factory.mktemp("whole") / "run", "--epochs", 3))


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_bert, farstail_dir, tmp_path, monkeypatch,
                                                                capsys, whole):
    undo = kill_in_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3)
    undo()
    newest = tmp_path / "run" / "checkpoint-epoch2.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2:len(data) // 2 + 100] = bytes(100)  # 100 bytes in the middle, as a bad disk would
    newest.write_bytes(bytes(data))
    resumed = weights(run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3, "--resume"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "checkpoint-epoch2.pt (SHA-256 does not match the recorded one) is damaged" in log
    assert "resuming after epoch 1" in log


@pytest.mark.parametrize("damage", ["truncate", "empty", "start"])
def test_no_usable_checkpoint_stops_resume_with_one_line(tiny_bert, farstail_dir, tmp_path, monkeypatch, capsys,
                                                         damage):
    undo = kill_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2)
    undo()
    only = tmp_path / "run" / "checkpoint-epoch1.pt"
    data = only.read_bytes()
    only.write_bytes({"truncate": data[:len(data) // 2], "empty": b"", "start": bytes(100) + data[100:]}[damage])
    err = fails(2, capsys, tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2, "--resume")
    assert "no usable checkpoint" in err and "checkpoint-epoch1.pt" in err and "--overwrite" in err
    assert only.exists() and not (tmp_path / "run" / "metrics.json").exists()  # nothing deleted, nothing trained


def test_a_second_run_on_the_same_folder_stops_at_once(tiny_bert, farstail_dir, tmp_path, capsys):
    holder = ("import sys, time; from pathlib import Path; from common.checkpoint import RunLock\n"
              "with RunLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n")
    (tmp_path / "run").mkdir()
    p = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "run")], cwd=ROOT, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        err = fails(2, capsys, tiny_bert, farstail_dir, tmp_path / "run", "--resume", "--freeze", 4)
        assert f"in use by another run (process {p.pid})" in err
    finally:
        p.kill()
        p.wait()
    assert [f.name for f in (tmp_path / "run").iterdir()] == [".lock"]


def test_non_finite_loss_stops_with_exit_1_and_keeps_the_last_good_checkpoint(
        tiny_bert, farstail_dir, tmp_path, monkeypatch, capsys, whole):
    real_forward = nli.train.forward

    def poisoned(model):  # epoch 2 produces infinite logits, as a diverging run does
        f = real_forward(model)
        return lambda b: f(b) * (float("inf") if poisoned.on else 1.0)
    poisoned.on = False
    real_epoch = nli.train.train_epoch

    def epoch(*a, **kw):
        poisoned.on = a[-1].epoch == 2
        return real_epoch(*a, **kw)
    monkeypatch.setattr(nli.train, "forward", poisoned)
    monkeypatch.setattr(nli.train, "train_epoch", epoch)
    err = fails(1, capsys, tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3)
    assert "NaN or infinite at epoch 2, step 1" in err
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists() and not (run / "model").exists()
    assert json.loads((run / "checkpoint.json").read_text())["checkpoints"][0]["epoch"] == 1
    assert err.strip() in (run / "train.log").read_text()  # the error is in the log too
    monkeypatch.undo()
    resumed = weights(run_nli(tiny_bert, farstail_dir, run, "--epochs", 3, "--resume"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_huge_learning_rate_never_ends_in_exit_0(tiny_bert, farstail_dir, tmp_path, capsys):
    err = fails(1, capsys, tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2, "--lr", "1e30")
    assert "NaN or infinite" in err and not (tmp_path / "run" / "metrics.json").exists()


def test_disk_full_at_each_output_file_then_resume_completes(tiny_bert, farstail_dir, tmp_path, monkeypatch, capsys):
    """Every file a run writes goes through os.replace (atomic rename): fail each in turn."""
    real_replace = os.replace
    targets = []
    monkeypatch.setattr(os, "replace", lambda src, dst: (targets.append(Path(dst).name), real_replace(src, dst))[1])
    reference = weights(run_nli(tiny_bert, farstail_dir, tmp_path / "ref", "--epochs", 1))
    names = [t for t in dict.fromkeys(targets) if not t.startswith(".")]
    assert {"checkpoint-epoch1.pt", "checkpoint.json", "config.json", "model", "history.csv", "report.txt",
            "curves.png", "metrics.json"} <= set(names)
    for k, name in enumerate(names):
        out = tmp_path / f"run{k}"

        def full(src, dst, name=name):
            if Path(dst).name == name:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst)
        monkeypatch.setattr(os, "replace", full)
        err = fails(1, capsys, tiny_bert, farstail_dir, out, "--epochs", 1)
        assert f"cannot write {out / name}: No space left on device" in err, err
        assert not (out / "metrics.json").exists() or name != "metrics.json"
        monkeypatch.setattr(os, "replace", real_replace)
        resumed = weights(run_nli(tiny_bert, farstail_dir, out, "--epochs", 1, "--resume"))
        assert all(torch.equal(reference[key], resumed[key]) for key in reference), name
        left = sorted(p.name for p in out.iterdir())
        assert not [n for n in left if n.endswith(".tmp") or n.startswith("checkpoint")], left


def test_killed_while_writing_results_then_resume_redoes_them(tiny_bert, farstail_dir, tmp_path, monkeypatch, whole):
    real_replace = os.replace

    def killed(src, dst):
        if Path(dst).name == "report.txt":
            raise KeyboardInterrupt
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3)
    monkeypatch.setattr(os, "replace", real_replace)
    run = tmp_path / "run"
    assert (run / "model").exists() and list(run.glob(".report.txt.*.tmp")) and not (run / "metrics.json").exists()
    resumed = weights(run_nli(tiny_bert, farstail_dir, run, "--epochs", 3, "--resume"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert (run / "report.txt").exists() and not list(run.glob(".*.tmp")) and not list(run.glob("checkpoint*"))


def test_bom_is_read_and_cp1256_names_file_and_line(tiny_bert, farstail_dir, tmp_path, capsys):
    shutil.copytree(farstail_dir, tmp_path / "bom")
    for f in (tmp_path / "bom").glob("*.csv"):
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    m = json.loads((run_nli(tiny_bert, tmp_path / "bom", tmp_path / "ok", "--epochs", 1) / "metrics.json").read_text())
    assert m["test"]["per_class"]["entailment"]["support"] > 0
    shutil.copytree(farstail_dir, tmp_path / "cp")
    val = tmp_path / "cp" / "Val-word.csv"
    val.write_bytes(val.read_text(encoding="utf-8").encode("cp1256", errors="replace"))
    err = fails(2, capsys, tiny_bert, tmp_path / "cp", tmp_path / "bad", "--epochs", 1)
    assert "Val-word.csv, line 2: not UTF-8" in err
    assert not (tmp_path / "bad" / "train.log").exists()


def test_a_flag_error_leaves_nothing_so_the_corrected_command_runs(tiny_bert, farstail_dir, tmp_path, capsys):
    err = fails(2, capsys, tiny_bert, farstail_dir, tmp_path / "run", "--freeze", 9)
    assert "--freeze 9: the model has 4 encoder layers" in err
    run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--freeze", 3, "--epochs", 1)  # not refused as "not empty"
    with pytest.raises(SystemExit) as e:
        run_nli(tiny_bert, farstail_dir, tmp_path / "x", "--keep-layers", 0)
    assert e.value.code == 2


def test_resume_accepts_the_same_folder_spelled_another_way(tiny_bert, farstail_dir, tmp_path, monkeypatch, capsys):
    undo = kill_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2)
    undo()
    monkeypatch.chdir(tmp_path)
    run_nli(os.path.relpath(tiny_bert), os.path.relpath(farstail_dir), Path("run"), "--epochs", 2, "--resume")
    assert (tmp_path / "run" / "metrics.json").exists()
    err = fails(2, capsys, tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3, "--resume")
    assert "--epochs 2 there, 3 now" in err and "would delete it" in err
    assert err.strip() in (tmp_path / "run" / "train.log").read_text()


def test_predict_handles_empty_tsv_run_folder_and_missing_output_folder(tiny_bert, farstail_dir, tmp_path, capsys):
    run = run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 1)
    (tmp_path / "empty.tsv").write_text("premise\thypothesis\n", encoding="utf-8")
    err = fails(2, capsys, ["--model", str(run), "--tsv", str(tmp_path / "empty.tsv")], call=predict.main)
    assert "no pairs" in err
    err = fails(2, capsys, ["--model", str(run), "--tsv", str(farstail_dir / "Val-word.csv"), "--output",
                            str(tmp_path / "missing" / "p.tsv")], call=predict.main)
    assert "does not exist" in err
    (tmp_path / "bom.tsv").write_bytes(b"\xef\xbb\xbfpremise\thypothesis\n\xd8\xa2\xd8\xa8 .\t\xd8\xa2\xd8\xa8 .\n")
    predict.main(["--model", str(run), "--tsv", str(tmp_path / "bom.tsv"), "--output", str(tmp_path / "p.tsv")])
    rows = list(csv.DictReader(open(tmp_path / "p.tsv", encoding="utf-8"), delimiter="\t"))
    assert len(rows) == 1 and rows[0]["label"] in ("entailment", "contradiction", "neutral")


def test_ser_skips_nan_audio_refuses_one_class_and_counts_skips_once(tiny_hubert, tmp_path, capsys):
    from ser.synthetic import write_shemo
    from ser.train import main as ser_main
    write_shemo(tmp_path / "data", per_class=4, speakers=2, letters="AN")
    sf.write(tmp_path / "data" / "female" / "F01A09.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    (tmp_path / "data" / "female" / "notes.wav").write_bytes(b"x")
    ser_main(["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
              "--epochs", "1"])
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(m["skipped_files"]) == 2 and any("F01A09.wav" in s for s in m["skipped_files"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "holds NaN or infinite samples" in log and "2 files skipped" in log
    write_shemo(tmp_path / "one", per_class=4, speakers=2, letters="A")
    err = fails(2, capsys, ["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "one"), "--out",
                            str(tmp_path / "r1")], call=ser_main)
    assert "at least 2 are needed" in err


def test_run_all_refuses_a_shemo_folder_without_usable_audio(tmp_path):
    (tmp_path / "shemo").mkdir()
    (tmp_path / "shemo" / "F01A01.wav").write_bytes(b"not audio")
    r = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--shemo", str(tmp_path / "shemo"), "--out",
                        str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not hold usable ShEMO audio" in r.stderr
    assert not (tmp_path / "runs").exists()
