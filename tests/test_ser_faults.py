"""SER inputs that would make a number wrong, refused or repaired before anything is written: a
clip listed twice, one speaker spelled two ways, a one-class training split, a constant clip, more
folds than speakers; and what a damaged fold, an absent class and a full cache disk say."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.errors import UserError
from common.metrics import report_text, summarize
from ser import data
from ser.audio import read_audio
from ser.splits import Protocol, split_by_speaker
from ser.synthetic import tone, write_shemo
from ser.train import main as ser_main
from tests.test_reliability import fails


def write_manifest(folder: Path, rows: list[tuple[str, str, str]], name: str = "manifest.csv") -> Path:
    """Clips named in rows (path, label, speaker) generated where missing, and the manifest of rows."""
    rng = np.random.default_rng(0)
    for path, label, _ in rows:
        if not (folder / path).exists():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            sf.write(folder / path, tone(rng, 220.0 if label == "a" else 440.0, 0.3, 0.6, 16000), 16000)
    manifest = folder / name
    manifest.write_text("path,label,speaker\n" + "".join(f"{p},{y},{s}\n" for p, y, s in rows), encoding="utf-8")
    return manifest


def refused(capsys, model, source: list, out: Path, *extra) -> str:
    """The run's one error line (exit 2); --out holds nothing but the lock."""
    line = fails(2, capsys, ["--model", str(model), *map(str, source), "--out", str(out), "--epochs", "1",
                             *map(str, extra)], call=ser_main)
    assert not out.exists() or [p.name for p in out.iterdir()] == [".lock"]
    return line


def test_a_clip_listed_twice_is_refused_naming_both_rows(tiny_hubert, tmp_path, capsys):
    rows = [(f"audio/c{i}.wav", "ab"[i % 2], f"S{i % 3}") for i in range(12)]
    (tmp_path / "audio").mkdir()
    for name, again in (("same", "audio/c4.wav"), ("dotted", "./audio/c4.wav"), ("folder", "audio/../audio/c4.wav")):
        manifest = write_manifest(tmp_path, rows + [(again, "a", "S2")], f"{name}.csv")  # S2: another speaker too
        line = refused(capsys, tiny_hubert, ["--manifest", manifest], tmp_path / name)
        assert f"{manifest}, lines 6 and 14 list the same clip ({tmp_path / 'audio' / 'c4.wav'})" in line
    # ShEMO: the same clip in two folders, or its number written two ways
    write_shemo(tmp_path / "shemo", per_class=3, letters="AN")
    (tmp_path / "shemo" / "copy").mkdir()
    copy = tmp_path / "shemo" / "copy" / "F01A01.wav"
    copy.write_bytes((tmp_path / "shemo" / "female" / "F01A01.wav").read_bytes())
    with pytest.raises(UserError, match=r"copy/F01A01.wav and .*female/F01A01.wav are the same ShEMO clip"):
        data.scan_shemo(tmp_path / "shemo")
    copy.rename(copy.with_name("F1A001.wav"))
    with pytest.raises(UserError, match=r"F1A001.wav .*are the same ShEMO clip \(the same speaker, emotion and number"):
        data.scan_shemo(tmp_path / "shemo")


def test_a_speaker_number_written_three_ways_is_one_speaker(tmp_path):
    assert data.parse_shemo_name("F1A01.wav")["speaker"] == data.parse_shemo_name("F001N02.wav")["speaker"] == "F01"
    assert [data.speaker_id(s) for s in ("F1", "F01", "F001", "3", "03", "spk12", "anna")] == \
        ["F01", "F01", "F01", "03", "03", "spk12", "anna"]
    spellings = ["F1", "F01", "F001"]
    rows = [(f"audio/f{i}.wav", "ab"[i % 2], spellings[i % 3]) for i in range(12)]
    rows += [(f"audio/{s}{i}.wav", "ab"[i % 2], s) for s in ("M02", "M03", "M04") for i in range(4)]
    clips = data.read_manifest(write_manifest(tmp_path, rows))
    speakers = [c.speaker for c in clips]
    assert sorted(set(speakers)) == ["F01", "M02", "M03", "M04"]
    split = split_by_speaker([c.label for c in clips], speakers, seed=0)
    assert [name for name, idx in split.items() if 0 in idx] == [name for name, idx in split.items()
                                                                 if set(range(12)) <= set(idx)]  # F01: one split


def test_a_one_class_training_split_is_refused_under_speakers_and_folds(tiny_hubert, tmp_path, capsys):
    # one speaker holds every `a` clip: the speaker split (and every fold) leaves training with `b` alone
    rows = [(f"audio/s1-{i}.wav", "a", "S1") for i in range(6)]
    rows += [(f"audio/s{s}-{i}.wav", "b", f"S{s}") for s in (2, 3) for i in range(3)]
    manifest = write_manifest(tmp_path, rows)
    line = refused(capsys, tiny_hubert, ["--manifest", manifest], tmp_path / "speaker", "--split", "speaker")
    assert "--split speaker: the training split holds one class (b)" in line
    line = refused(capsys, tiny_hubert, ["--manifest", manifest], tmp_path / "folds", "--split", "speaker",
                   "--folds", 3)
    assert "--folds 3 (fold 1): the training split holds one class" in line
    with pytest.raises(UserError, match="--protocol study: the balanced corpus holds 4 items, too few"):
        Protocol("study").items(["a", "a", "b", "b"], [None] * 4, seed=0, limit=None)


def test_a_constant_clip_is_silence_at_any_level(tmp_path):
    write_shemo(tmp_path / "shemo", per_class=3, letters="AN")
    dc = tmp_path / "shemo" / "female" / "F01A01.wav"
    sf.write(dc, np.full(8000, 0.5, np.float32), 16000)
    sf.write(tmp_path / "stereo.wav", np.full((8000, 2), -0.25, np.float32), 16000)
    for path in (dc, tmp_path / "stereo.wav"):
        with pytest.raises(ValueError, match="is silent"):
            read_audio(path)
    said = []
    kept, _, skipped = data.load_clips(data.scan_shemo(tmp_path / "shemo")[0], strict=False, log=said.append)
    assert skipped == [str(dc)] and len(kept) == 5 and any(f"{dc} is silent" in s for s in said)
    with pytest.raises(UserError, match=r"5 usable ShEMO-named clips \(anger 2, neutral 3\); unusable: 1 is silent"):
        data.check_shemo(tmp_path / "shemo")  # what run_all.sh asks before any training


def test_folds_beyond_the_speakers_are_refused_first_and_a_damaged_fold_is_trained_again(tiny_hubert, tmp_path,
                                                                                          capsys):
    write_shemo(tmp_path / "data", per_class=6, speakers=4, letters="AN")  # speakers F01, F02, M01, M02
    out = tmp_path / "folds"
    source = ["--data-dir", tmp_path / "data"]
    flags = ("--split", "speaker", "--no-balance")
    for folds in ("9" * 20, "5"):  # (20 digits: refused before any list of folds is made)
        line = refused(capsys, tiny_hubert, source, out, *flags, "--folds", folds)
        assert f"--folds {folds}: the corpus has 4 speakers" in line
    argv = ["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
            *flags, "--folds", "3"]
    ser_main(argv)  # the corrected command is not refused
    first = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "config.json").read_text())["derived"]["split_seed"] == 0
    kept = (out / "fold2" / "predictions.csv").read_text()
    (out / "fold2" / "predictions.csv").write_text("split,item\n")  # damaged
    (out / "metrics.json").unlink()  # the set unfinished: the summary of the folds is written again
    ser_main(argv + ["--resume"])
    assert (out / "fold2" / "predictions.csv").read_text() == kept
    assert json.loads((out / "metrics.json").read_text())["pooled"] == first["pooled"]
    assert "fold 2: the metrics.json or predictions.csv in" in (out / "train.log").read_text()


def test_a_class_absent_from_a_split_has_no_recall(tmp_path):
    true, pred = [0, 0, 1, 1], [0, 1, 1, 2]  # z absent, predicted once; w absent, never predicted
    m = summarize(true, pred, ["x", "y", "z", "w"])
    assert m["per_class"]["z"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert m["per_class"]["w"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    rows = {}
    for line in report_text(true, pred, ["x", "y", "z", "w"]).splitlines():  # (the first rows so named)
        if line.split() and line.split()[0] in ("z", "w", "weighted"):
            rows.setdefault(line.split()[0], line.split()[1:])
    assert rows == {"z": ["0.0000", "n/a", "n/a", "0"], "w": ["n/a", "n/a", "n/a", "0"],
                    "weighted": ["avg", "0.7500", "0.5000", "0.5833", "4"]}


def test_a_full_disk_under_the_augmentation_cache_is_named_as_the_os_names_it(tmp_path, monkeypatch):
    # a file-size limit stands in for a full disk: the write stops part way, as on a disk that fills
    # up (there the OS says "No space left on device"; np.save into the file said "256000 requested
    # and 100000 written", which names no cause)
    import resource
    from common.errors import RunFailed
    from ser import audio
    from ser.audio import Augmentation
    monkeypatch.setattr(audio, "augment", lambda wave, draw, method: np.ones(64000, np.float32))  # 256 kB
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))  # (Python ignores SIGXFSZ: writes fail)
    try:
        with pytest.raises(RunFailed) as e:
            audio.augmented_copies([np.ones(16000, np.float32)], [(0, Augmentation(1.0, 1.0))], tmp_path / "cache")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert str(e.value).startswith(f"cannot write {tmp_path / 'cache'}/") and str(e.value).endswith(
        ".npy: File too large"), e.value
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written left
