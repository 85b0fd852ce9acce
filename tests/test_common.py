"""Shared pieces: atomic checkpoints, the output folder rule, batch order."""
import pytest
import torch

from common import run as run_mod
from common.batching import LengthGroupedBatches, micro_batches, sorted_batches
from common.run import UserError, load_checkpoint, prepare_out_dir, save_checkpoint


def test_checkpoint_killed_mid_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is killed while writing
    monkeypatch.setattr(run_mod.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_non_empty_out_needs_resume_or_overwrite(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        prepare_out_dir(tmp_path, resume=False, overwrite=False)
    prepare_out_dir(tmp_path, resume=True, overwrite=False)
    assert (tmp_path / "old.txt").exists()
    with pytest.raises(UserError, match="does not look like a run folder"):  # --overwrite --out . must not wipe a repo
        prepare_out_dir(tmp_path, resume=False, overwrite=True)
    assert (tmp_path / "old.txt").exists()
    (tmp_path / "train.log").write_text("an earlier run")
    prepare_out_dir(tmp_path, resume=False, overwrite=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="contradict"):
        prepare_out_dir(tmp_path, resume=True, overwrite=True)


def test_length_grouped_batches_cover_everything_and_follow_seed_and_epoch():
    lengths = [(i * 37) % 101 for i in range(250)]
    sampler = LengthGroupedBatches(lengths, batch_size=8, seed=1, window=4)
    b1 = sampler.epoch(1)
    assert sorted(i for b in b1 for i in b) == list(range(250)) and len(b1) == len(sampler) == 32
    assert b1 == LengthGroupedBatches(lengths, 8, seed=1, window=4).epoch(1)
    assert b1 != sampler.epoch(2) and b1 != LengthGroupedBatches(lengths, 8, seed=2, window=4).epoch(1)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in b1) / len(b1)
    assert spread < 40  # grouped: far less than the 0..100 spread of a random batch


def test_eval_order_is_length_sorted_and_micro_batches_split_evenly():
    batches = sorted_batches([5, 1, 4, 2, 3], 2)
    assert batches == [[1, 3], [4, 2], [0]]
    assert micro_batches(list(range(8)), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert micro_batches(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert micro_batches([7], 4) == [[7]]
