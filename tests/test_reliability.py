"""Faults a user meets, injected through the same command line: damaged checkpoints, two runs
on one folder, a non-finite loss, a disk that fills up, kills at any moment, encodings, and the
ordinary mistakes. Each must end in a correct result or a one-line error with a non-zero exit."""
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import nli.train
from common.files import sha256
from common.outdir import KEEP, contents, owned
from common.training import Training
from nli import predict
from nli.train import main as nli_main
from tests.conftest import interrupt_at_epoch

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


kill_in_epoch = interrupt_at_epoch


@pytest.fixture(scope="module")
def whole(tiny_bert, farstail_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run: the weights every recovered run must end with."""
    return weights(run_nli(tiny_bert, farstail_dir, tmp_path_factory.mktemp("whole") / "run", "--epochs", 3))


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_bert, farstail_dir, tmp_path, monkeypatch,
                                                                capsys, whole):
    undo = kill_in_epoch(monkeypatch, 3)
    with pytest.raises(SystemExit, match="^130$"):  # "interrupted; resume with --resume"
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
    with pytest.raises(SystemExit, match="^130$"):  # "interrupted; resume with --resume"
        run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2)
    undo()
    only = tmp_path / "run" / "checkpoint-epoch1.pt"
    data = only.read_bytes()
    only.write_bytes({"truncate": data[:len(data) // 2], "empty": b"", "start": bytes(100) + data[100:]}[damage])
    err = fails(2, capsys, tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2, "--resume")
    assert "no usable checkpoint" in err and "checkpoint-epoch1.pt" in err and "--overwrite" in err
    assert only.exists() and not (tmp_path / "run" / "metrics.json").exists()  # nothing deleted, nothing trained


def test_a_second_run_on_the_same_folder_stops_at_once(tiny_bert, farstail_dir, tmp_path, capsys):
    holder = ("import sys, time; from pathlib import Path; from common.outdir import RunLock\n"
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
    real_epoch = Training.train_epoch

    def epoch(self, at, *a, **kw):
        poisoned.on = at == 2
        return real_epoch(self, at, *a, **kw)
    monkeypatch.setattr(nli.train, "forward", poisoned)
    monkeypatch.setattr(Training, "train_epoch", epoch)
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
    """Every file a run writes goes through os.replace (atomic rename): fail each in turn (two epochs:
    the last epoch writes no checkpoint; the first one's is written in the background)."""
    real_replace = os.replace
    targets = []
    monkeypatch.setattr(os, "replace", lambda src, dst: (targets.append(Path(dst).name), real_replace(src, dst))[1])
    reference = weights(run_nli(tiny_bert, farstail_dir, tmp_path / "ref", "--epochs", 2))
    names = [t for t in dict.fromkeys(targets) if not t.startswith(".")]
    assert {"checkpoint-epoch1.pt", "checkpoint.json", "config.json", "model", "history.csv", "report.txt",
            "curves.png", "metrics.json"} <= set(names) and "checkpoint-epoch2.pt" not in names
    for k, name in enumerate(names):
        out = tmp_path / f"run{k}"

        def full(src, dst, name=name):
            if Path(dst).name == name:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst)
        monkeypatch.setattr(os, "replace", full)
        err = fails(1, capsys, tiny_bert, farstail_dir, out, "--epochs", 2)
        assert f"cannot write {out / name}: No space left on device" in err, err
        assert not (out / "metrics.json").exists() or name != "metrics.json"
        monkeypatch.setattr(os, "replace", real_replace)
        resumed = weights(run_nli(tiny_bert, farstail_dir, out, "--epochs", 2, "--resume"))
        assert all(torch.equal(reference[key], resumed[key]) for key in reference), name
        left = sorted(p.name for p in out.iterdir())
        assert not [n for n in left if n.endswith(".tmp") or n.startswith("checkpoint")], left


def test_ctrl_c_while_checkpoints_are_written_in_the_background_then_resume_is_exact(
        tiny_bert, farstail_dir, tmp_path, monkeypatch, whole):
    """Each checkpoint is written while the next epoch trains (from a copy taken at the epoch's
    end); a Ctrl-C finishes the write in flight before the run exits, and the resume is exact."""
    import common.checkpoint
    real = common.checkpoint.save_verified

    def slow(path, state):  # slower than an epoch of this tiny model: training goes on meanwhile
        time.sleep(1.0)
        return real(path, state)
    monkeypatch.setattr(common.checkpoint, "save_verified", slow)
    kill_in_epoch(monkeypatch, 3)
    with pytest.raises(SystemExit, match="^130$"):
        run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3)
    assert not [t for t in threading.enumerate() if t.name.startswith("checkpoint-epoch")]
    run = tmp_path / "run"
    entries = json.loads((run / "checkpoint.json").read_text())["checkpoints"]
    assert [e["epoch"] for e in entries] == [2, 1] and all(sha256(run / e["file"]) == e["sha256"] for e in entries)
    monkeypatch.undo()
    resumed = weights(run_nli(tiny_bert, farstail_dir, run, "--epochs", 3, "--resume"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_killed_while_writing_results_then_resume_redoes_them(tiny_bert, farstail_dir, tmp_path, monkeypatch, whole):
    real_replace = os.replace

    def killed(src, dst):
        if Path(dst).name == "report.txt":
            raise KeyboardInterrupt
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(SystemExit, match="^130$"):  # "interrupted; resume with --resume"
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
    with pytest.raises(SystemExit, match="^130$"):  # "interrupted; resume with --resume"
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
    assert all(owned(p) for p in contents(tmp_path / "run") if p.name not in KEEP)  # --overwrite would remove it all
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


# ---------------------------------------------------------------- round two: nothing lost, nothing mixed
@pytest.fixture(scope="module")
def finished(tiny_bert, farstail_dir, tmp_path_factory):
    """A finished one-epoch NLI run, to predict with and to try to overwrite."""
    return run_nli(tiny_bert, farstail_dir, tmp_path_factory.mktemp("finished") / "run", "--epochs", 1)


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_nothing_a_user_made_is_deleted(tiny_bert, farstail_dir, finished, tmp_path, capsys):
    # predict --output naming a folder (a finished run) is refused; the folder stays as it was
    before = tree(finished)
    err = fails(2, capsys, ["--model", str(finished), "--tsv", str(farstail_dir / "Val-word.csv"), "--output",
                            str(finished)], call=predict.main)
    assert "is a folder" in err and tree(finished) == before
    # --overwrite of a model folder (it has a config.json, as every save_pretrained folder does)
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    (model / "notes.txt").write_text("mine")
    before = tree(model)
    for flag in ("--overwrite", "--resume"):
        err = fails(2, capsys, model, farstail_dir, model, "--epochs", 1, flag)
        assert "holds no run of this project" in err
    assert tree(model) == before
    # a run folder whose model/ this run reads: --overwrite would delete an input
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    err = fails(2, capsys, run / "model", farstail_dir, run, "--epochs", 1, "--overwrite")
    assert "would delete" in err and "which this run reads" in err
    # --overwrite of a finished run deletes what the run wrote, by name, and only that: not a figure of the user's
    # nor a file that merely looks like a checkpoint or a temporary one
    mine = ("my-notes.txt", "my-figure.png", "checkpoint-epoch-best.pt", ".notes.tmp")
    for name in mine:
        (run / name).write_text("mine")
    assert all(owned(p) for p in contents(run) if p.name not in (*KEEP, *mine))  # OUTPUTS names all a run writes
    run_nli(tiny_bert, farstail_dir, run, "--epochs", 1, "--overwrite")
    assert all((run / name).read_text() == "mine" for name in mine) and (run / "metrics.json").exists()
    assert f"--overwrite left in place what no run wrote: {', '.join(sorted(mine))}" in (run / "train.log").read_text()


def test_a_resume_or_a_skip_never_mixes_two_datasets(tiny_bert, farstail_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(farstail_dir, data)
    undo = kill_in_epoch(monkeypatch, 2)
    with pytest.raises(SystemExit, match="^130$"):
        run_nli(tiny_bert, data, tmp_path / "run", "--epochs", 3)
    assert "interrupted; resume with --resume" in capsys.readouterr().err
    undo()
    train = data / "Train-word.csv"
    original = train.read_bytes()
    train.write_text(train.read_text(encoding="utf-8").replace("\te\n", "\tn\n", 3), encoding="utf-8")
    err = fails(2, capsys, tiny_bert, data, tmp_path / "run", "--epochs", 3, "--resume")
    assert f"{train} changed" in err and "checkpoint" in err and "--overwrite" in err
    train.write_bytes(original)  # the same data again: the resume goes on
    run_nli(tiny_bert, data, tmp_path / "run", "--epochs", 3, "--resume")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["inputs"]
    assert recorded["data"]["files"]["Train-word.csv"].startswith(f"{len(original)} bytes, sha256 ")
    assert "config.json" in recorded["model"]["files"]
    # a finished run is skipped only while its inputs are the same
    capsys.readouterr()
    run_nli(tiny_bert, data, tmp_path / "run", "--epochs", 3, "--resume")
    assert "already holds this finished run" in capsys.readouterr().out
    with open(data / "Test-word.csv", "a", encoding="utf-8") as f:
        f.write("کتاب است.\tکتاب است.\te\t0\t1\n")
    err = fails(2, capsys, tiny_bert, data, tmp_path / "run", "--epochs", 3, "--resume")
    assert f"{data / 'Test-word.csv'} changed" in err and "finished run" in err


def test_a_zero_length_checkpoint_manifest_falls_back_to_each_checkpoints_own_checksum(
        tiny_bert, farstail_dir, tmp_path, monkeypatch, capsys, whole):
    undo = kill_in_epoch(monkeypatch, 3)
    with pytest.raises(SystemExit, match="^130$"):
        run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3)
    undo()
    (tmp_path / "run" / "checkpoint.json").write_bytes(b"")  # as a power cut can leave it
    resumed = weights(run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3, "--resume"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "checkpoint.json is damaged; checking each checkpoint against its own .sha256 file" in log
    assert "resuming after epoch 2" in log


def test_bad_values_are_one_line_and_leave_nothing_behind(tiny_bert, farstail_dir, tmp_path, capsys):
    out = tmp_path / "run"
    for flags, says in ((["--lr", "nan"], "--lr nan"), (["--lr", "-1"], "--lr -1.0"), (["--lr", "inf"], "--lr inf"),
                        (["--seed", "-1"], "--seed -1"), (["--prune-heads", "nan"], "--prune-heads nan"),
                        (["--prune-heads", "0"], "--prune-heads 0.0")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_nli(tiny_bert, farstail_dir, out, *flags)
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and "Traceback" not in err, flags
    for flags, says in ((["--max-length", "2"], "a pair needs at least 5 word pieces"),
                        (["--max-length", "300"], "the model has 256 position embeddings")):
        assert says in fails(2, capsys, tiny_bert, farstail_dir, out, *flags)
    assert not (out / "train.log").exists()  # the corrected command is not refused
    (tmp_path / "file").write_text("x")
    assert "cannot create or write it" in fails(2, capsys, tiny_bert, farstail_dir, tmp_path / "file" / "sub")
    one = tmp_path / "one-label"
    shutil.copytree(farstail_dir, one)
    train = one / "Train-word.csv"
    text = train.read_text(encoding="utf-8")
    train.write_text(text.replace("\tc\n", "\te\n").replace("\tn\n", "\te\n"), encoding="utf-8")
    assert "all have the label 'e'" in fails(2, capsys, tiny_bert, one, out)
    long_field = tmp_path / "long"
    shutil.copytree(farstail_dir, long_field)  # a field longer than csv's default limit of 131,072 characters
    val = long_field / "Val-word.csv"
    lines = val.read_text(encoding="utf-8").splitlines()
    lines[1] = "«" + "کتاب " * 30000 + "»" + lines[1][lines[1].index("\t"):]
    val.write_text("\n".join(lines) + "\n", encoding="utf-8")
    m = json.loads((run_nli(tiny_bert, long_field, tmp_path / "ok", "--epochs", 1) / "metrics.json").read_text())
    assert m["val"]["per_class"]["entailment"]["support"] > 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_one_line(tiny_bert, farstail_dir, tmp_path, capsys):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    assert "cannot create or write it" in fails(2, capsys, tiny_bert, farstail_dir, tmp_path / "ro" / "run")


def test_a_full_disk_in_any_library_writer_is_one_line(tiny_bert, farstail_dir, tmp_path, monkeypatch, capsys):
    import transformers.modeling_utils
    from safetensors import SafetensorError
    import common.checkpoint

    def no_space(*a, **kw):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", no_space)
    err = fails(1, capsys, tiny_bert, farstail_dir, tmp_path / "a", "--epochs", 1)
    assert f"cannot write {tmp_path / 'a' / 'model'}: Error while serializing" in err
    assert not list((tmp_path / "a").glob(".model.*"))  # nothing half-written left behind
    monkeypatch.undo()

    def unexpected_pos(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 980")
    monkeypatch.setattr(common.checkpoint.torch, "save", unexpected_pos)
    err = fails(1, capsys, tiny_bert, farstail_dir, tmp_path / "b", "--epochs", 2)
    assert "checkpoint-epoch1.pt: [enforce fail" in err and "(is the disk full?)" in err


def test_a_model_of_the_other_task_or_an_unfinished_run_is_one_line(tiny_bert, tiny_hubert, farstail_dir, finished,
                                                                     tmp_path, capsys):
    from nli import prune_curve
    from ser import predict as ser_predict
    from ser.model import EmotionClassifier, save_classifier, study_feature_extractor
    from transformers import HubertForSequenceClassification, HubertModel  # (the first: a classifier, of audio)
    ser_model = tmp_path / "ser-model"
    save_classifier(EmotionClassifier(HubertModel.from_pretrained(tiny_hubert), 2, False), study_feature_extractor(),
                    ["anger", "neutral"], ser_model)
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    assert "ser.train's emotion model" in fails(2, capsys, ["--model", str(ser_model), "a", "b"], call=predict.main)
    assert "ser.train's emotion model" in fails(
        2, capsys, ["--model", str(ser_model), "--data-dir", str(farstail_dir)], call=prune_curve.main)
    assert "not an emotion model" in fails(2, capsys, ["--model", str(finished), str(wav)], call=ser_predict.main)
    HubertForSequenceClassification(HubertModel.from_pretrained(tiny_hubert).config).save_pretrained(tmp_path / "hsc")
    assert "is not a text classifier (Unrecognized configuration class" in fails(
        2, capsys, ["--model", str(tmp_path / "hsc"), "a", "b"], call=predict.main)
    assert "not an emotion model" in fails(2, capsys, ["--model", str(tiny_bert), str(wav)], call=ser_predict.main)
    unfinished = tmp_path / "unfinished"
    (unfinished).mkdir()
    for name in ("config.json", "train.log", ".run-marker"):
        shutil.copy(finished / name, unfinished / name)
    assert "has not finished" in fails(2, capsys, ["--model", str(unfinished), "a", "b"], call=predict.main)
    assert "has not finished" in fails(2, capsys, ["--model", str(unfinished), str(wav)], call=ser_predict.main)
    (tmp_path / "empty").mkdir()
    assert "no config.json there" in fails(
        2, capsys, ["--model", str(tmp_path / "empty"), "--data-dir", str(farstail_dir)], call=prune_curve.main)
    for not_a_bert in (tiny_hubert, farstail_dir, tmp_path / "empty"):  # training from a folder without a BERT tokenizer
        out = tmp_path / "never"
        assert "cannot load its tokenizer" in fails(
            2, capsys, ["--model", str(not_a_bert), "--data-dir", str(farstail_dir), "--out", str(out)], call=nli.train.main)
        assert not (out / "config.json").exists()
    folds = tmp_path / "folds"  # a finished --folds run holds one model per fold, none of its own
    shutil.copytree(ser_model, folds / "fold1" / "model")
    assert "one model per fold" in fails(2, capsys, ["--model", str(folds), str(wav)], call=ser_predict.main)


def test_a_damaged_summary_input_is_listed_not_a_traceback(finished, tmp_path):
    from common.summary import write_summary
    run = tmp_path / "nli" / "all" / "seed0"
    shutil.copytree(finished, run)
    (run / "metrics.json").write_text('{"task": "nli", "val"', encoding="utf-8")
    missing = write_summary(tmp_path, ["nli.study"])
    assert "nli/all/seed0 (its metrics.json is damaged)" in missing
    assert "its metrics.json is damaged" in (tmp_path / "summary.md").read_text()


def test_ser_predict_gives_no_label_to_silence_or_non_audio(tiny_hubert, tmp_path, capsys):
    from ser import predict as ser_predict
    from ser.model import EmotionClassifier, save_classifier, study_feature_extractor
    from transformers import HubertModel
    save_classifier(EmotionClassifier(HubertModel.from_pretrained(tiny_hubert), 2, False), study_feature_extractor(),
                    ["anger", "neutral"], tmp_path / "model")
    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(tmp_path / "huge.wav", np.array([3e38, -3e38] * 8000, np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "long.wav", (0.1 * np.sin(np.arange(61 * 16000) / 3)).astype(np.float32), 16000)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        ser_predict.main(["--model", str(tmp_path / "model")] + [str(tmp_path / n) for n in
                                                                 ("silent.wav", "huge.wav", "long.wav")])
    out, err = capsys.readouterr()
    assert e.value.code == 1 and "Traceback" not in err and "nan" not in out
    assert "silent.wav is silent" in err and "huge.wav holds absurdly large samples" in err
    assert out.count("\n") == 1 and "long.wav: " in out and "[its first 60 s of 61.0 s]" in out


# ---------------------------------------------------------------- round three: no silently wrong number
def test_a_changed_trainer_logging_window_is_refused_not_ignored(tiny_bert, farstail_dir, tmp_path, capsys):
    """A finished run keeps no per-step losses: a resume asking another window would report the old one."""
    run = run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 1, "--trainer-logging-steps", 1)
    before = tree(run)
    err = fails(2, capsys, tiny_bert, farstail_dir, run, "--epochs", 1, "--trainer-logging-steps", 2, "--resume")
    assert "--trainer-logging-steps 1 there, 2 now" in err
    assert {k: v for k, v in tree(run).items() if k != "train.log"} == \
        {k: v for k, v in before.items() if k != "train.log"}


def test_a_fraction_that_masks_nothing_is_refused_like_one_that_removes_no_head(tiny_bert, farstail_dir, tmp_path,
                                                                               capsys):
    for by in ("random", "masking"):  # 16 heads of 32 × 32 weights: 0.0001 removes no head and masks no entry
        err = fails(2, capsys, tiny_bert, farstail_dir, tmp_path / by, "--prune-heads", 0.0001, "--prune-by", by)
        assert "--prune-heads 0.0001: give a fraction between 0 and 1 that " in err, by
        assert not (tmp_path / by / "train.log").exists() and not (tmp_path / by / "config.json").exists()


def test_a_moved_run_folder_resumes_and_a_moved_finished_one_is_skipped(tiny_bert, farstail_dir, tmp_path,
                                                                        monkeypatch, capsys, whole):
    undo = kill_in_epoch(monkeypatch, 3)
    with pytest.raises(SystemExit, match="^130$"):
        run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3)
    undo()
    shutil.move(tmp_path / "run", tmp_path / "moved")  # its .run-marker goes with it
    resumed = weights(run_nli(tiny_bert, farstail_dir, tmp_path / "moved", "--epochs", 3, "--resume"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["args"]["out"] == str(tmp_path / "moved")
    shutil.move(tmp_path / "moved", tmp_path / "again")
    capsys.readouterr()
    run_nli(tiny_bert, farstail_dir, tmp_path / "again", "--epochs", 3, "--resume")
    assert "already holds this finished run" in capsys.readouterr().out
    err = fails(2, capsys, tiny_bert, farstail_dir, tmp_path / "again", "--epochs", 2, "--resume")  # the rest stays
    assert "--epochs 3 there, 2 now" in err


def test_sighup_stops_a_training_as_sigterm_does(tiny_bert, farstail_dir, tmp_path, monkeypatch, capsys):
    """A closed terminal sends SIGHUP: "interrupted", exit 130, the checkpoint kept, as for SIGTERM.
    The signal is real (sent to this process when epoch 2 starts); without the run's own handler,
    the one set here fails the test instead of ending the test process."""
    real = Training.train_epoch

    def hang_up(self, at, *args, **kwargs):
        if at == 2:  # epoch 1 is done: its checkpoint is on disk
            os.kill(os.getpid(), signal.SIGHUP)
        return real(self, at, *args, **kwargs)

    def unhandled(*_):
        raise AssertionError("SIGHUP reached the test's handler, not the run's")
    monkeypatch.setattr(Training, "train_epoch", hang_up)
    before = signal.signal(signal.SIGHUP, unhandled)
    try:
        with pytest.raises(SystemExit) as e:
            run_nli(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 3)
    finally:
        signal.signal(signal.SIGHUP, before)
    err = capsys.readouterr().err
    assert e.value.code == 130 and "interrupted; resume with --resume" in err and "Traceback" not in err
    assert (tmp_path / "run" / "checkpoint.json").exists() and not (tmp_path / "run" / "metrics.json").exists()