"""Shared pieces: atomic and verified checkpoints, the output folder rule, the lock, batch order,
atomic result files and text decoding."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import checkpoint as ckpt_mod
from common.batching import LengthGroupedBatches, sorted_batches
from common.batching import micro_batches
from common.distributed import Dist
from common.checkpoint import load_verified, save_verified
from common.errors import RunFailed, UserError
from common.files import atomic_write, read_text, write_json
from common.outdir import MARKER, RunLock, check_out_dir, empty_out_dir, write_marker


def test_checkpoint_killed_mid_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-epoch1.pt"
    entry = save_verified(path, {"epoch": 1, "w": torch.ones(3)})

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is killed while writing
    monkeypatch.setattr(ckpt_mod.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_verified(path, {"epoch": 2, "w": torch.zeros(3)})
    state, why = load_verified(tmp_path, entry)
    assert why == "" and state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))


@pytest.mark.parametrize("damage", ["start", "middle", "end", "truncate", "empty"])
def test_a_damaged_checkpoint_is_never_loaded(tmp_path, damage):
    path = tmp_path / "c.pt"
    entry = save_verified(path, {"w": torch.arange(1000.0)})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:
        at = {"start": 0, "middle": len(data) // 2, "end": len(data) - 100}[damage]
        data[at:at + 100] = bytes(100)
    path.write_bytes(bytes(data))
    state, why = load_verified(tmp_path, entry)
    assert state is None and why


def test_only_a_marked_run_folder_is_resumed_into_or_emptied_and_only_of_what_a_run_wrote(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    (tmp_path / "config.json").write_text("{}")  # as every save_pretrained model folder has
    for resume, overwrite in ((False, False), (True, False), (False, True)):  # --overwrite --out . must not wipe a repo
        with pytest.raises(UserError, match="holds no run of this project"):
            check_out_dir(tmp_path, resume=resume, overwrite=overwrite)
    with pytest.raises(UserError, match="holds no run"):
        empty_out_dir(tmp_path)
    write_marker(tmp_path, "nli.train")
    with pytest.raises(UserError, match="not empty"):
        check_out_dir(tmp_path, resume=False, overwrite=False)
    check_out_dir(tmp_path, resume=True, overwrite=False)
    check_out_dir(tmp_path, resume=False, overwrite=True)
    (tmp_path / "model").mkdir()
    with pytest.raises(UserError, match="would delete .*model, which this run reads"):
        check_out_dir(tmp_path, resume=False, overwrite=True, reads=(tmp_path / "model",))
    (tmp_path / "curve").mkdir()
    write_marker(tmp_path / "curve", "nli.prune_curve")  # a nested run goes with its parent
    (tmp_path / "cache").mkdir()  # content-keyed augmented clips: kept
    for name in ("train.log", "metrics.json", "curves.png", "checkpoint-epoch2.pt", ".lock"):
        (tmp_path / name).write_text("")
    assert empty_out_dir(tmp_path) == ["old.txt"]  # left in place, and named
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", MARKER, "cache", "old.txt"]
    with pytest.raises(UserError, match="contradict"):
        check_out_dir(tmp_path, resume=True, overwrite=True)
    (tmp_path / "cache").rmdir()
    (tmp_path / "old.txt").unlink()
    (tmp_path / MARKER).unlink()
    check_out_dir(tmp_path, resume=False, overwrite=False)  # the lock file alone counts as empty


def test_a_second_process_cannot_take_the_lock_and_a_dead_one_leaves_none(tmp_path):
    holder = ("import sys, time; from pathlib import Path; from common.outdir import RunLock\n"
              "with RunLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n")
    root = Path(__file__).resolve().parent.parent
    p = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"in use by another run \(process {p.pid}\)"):
            RunLock(tmp_path).__enter__()
    finally:
        p.kill()
        p.wait()
    with RunLock(tmp_path):  # killed holder: the OS released its lock
        pass


def test_length_grouped_batches_cover_everything_and_follow_seed_and_epoch():
    lengths = [(i * 37) % 101 for i in range(250)]
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=1, window=4)
    b1 = sampler.epoch(1)
    assert sorted(i for b in b1 for i in b) == list(range(250)) and len(b1) == len(sampler) == 32
    assert b1 == LengthGroupedBatches(lengths, 8, seed=1, window=4).epoch(1)
    assert b1 != sampler.epoch(2) and b1 != LengthGroupedBatches(lengths, 8, seed=2, window=4).epoch(1)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in b1) / len(b1)
    assert spread < 40  # grouped: far less than the 0..100 spread of a random batch


def test_eval_order_is_length_sorted_and_micro_batches_have_fixed_size():
    assert sorted_batches([5, 1, 4, 2, 3], 2) == [[1, 3], [4, 2], [0]]
    assert micro_batches(list(range(8)), 4, Dist()) == ([[0, 1, 2, 3], [4, 5, 6, 7]], 4)
    assert micro_batches(list(range(5)), 4, Dist()) == ([[0, 1, 2, 3], [4]], 4)
    # two processes: rows rank::2, micro-batches of 2, the same count on both (one may be empty)
    assert micro_batches(list(range(5)), 4, Dist(0, 2)) == ([[0, 2], [4]], 2)
    assert micro_batches(list(range(5)), 4, Dist(1, 2)) == ([[1, 3], []], 2)


def test_failed_write_names_the_path_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("old")

    def disk_full(tmp):
        tmp.write_text("partial")
        raise OSError(28, "No space left on device")
    with pytest.raises(RunFailed, match=r"cannot write .*report.txt: No space left on device"):
        atomic_write(target, disk_full)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_json_never_holds_bare_nan(tmp_path):
    write_json(tmp_path / "m.json", {"loss": float("nan"), "acc": [1.0, float("inf")]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and json.loads(text) == {"loss": None, "acc": [1.0, None]}


def test_text_with_a_bom_is_read_and_other_encodings_name_the_line(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffpremise\tlabel\n".encode("utf-8"))
    assert read_text(tmp_path / "bom.csv").startswith("premise")
    (tmp_path / "cp.csv").write_bytes("premise\n".encode() + "کتاب\n".encode("cp1256"))
    with pytest.raises(UserError, match=r"cp.csv, line 2: not UTF-8"):
        read_text(tmp_path / "cp.csv")


def test_the_generators_overwrite_only_folders_they_made(tmp_path, capsys):
    from nli.synthetic import main as nli_synthetic
    from ser.synthetic import main as ser_synthetic
    mine = tmp_path / "my-farstail"
    mine.mkdir()
    (mine / "Train-word.csv").write_text("my own data\n")
    for main in (nli_synthetic, ser_synthetic):
        with pytest.raises(SystemExit) as e:
            main(["--data", str(mine), "--model", str(tmp_path / "model")])
        assert e.value.code == 2 and f"{mine} holds files" in capsys.readouterr().err
    assert (mine / "Train-word.csv").read_text() == "my own data\n" and not (tmp_path / "model").exists()
    made = ["--data", str(tmp_path / "data"), "--model", str(tmp_path / "bert"), "--rows", "3", "3", "3", "--layers", "1"]
    nli_synthetic(made)
    nli_synthetic(made)  # its own folders, made again (an interrupted smoke run's inputs are rebuilt)
    with pytest.raises(SystemExit):
        ser_synthetic(["--data", str(tmp_path / "data"), "--model", str(tmp_path / "hubert")])
    for main in (nli_synthetic, ser_synthetic):  # a folder under a file: one line, not a traceback
        with pytest.raises(SystemExit) as e:
            main(["--data", str(mine / "Train-word.csv" / "x"), "--model", str(tmp_path / "model")])
        assert e.value.code == 2 and "Train-word.csv/x cannot be created (Not a directory)" in capsys.readouterr().err
