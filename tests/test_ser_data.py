"""ShEMO names, audio reading, leak-free splits and balancing."""
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from common.errors import UserError
from ser import audio, data
from ser.audio import Augmentation, read_audio
from ser.data import parse_shemo_name, scan_shemo
from ser.splits import balance_plan, split_by_speaker, split_random


def test_shemo_names_parse_to_label_speaker_and_gender(tmp_path):
    assert parse_shemo_name("F01A01.wav") == {"gender": "F", "speaker": "F01", "label": "anger"}
    assert parse_shemo_name("M12W03.wav") == {"gender": "M", "speaker": "M12", "label": "surprise"}
    assert parse_shemo_name("m05s10.WAV")["label"] == "sadness"
    for bad in ("F01X01.wav", "X01A01.wav", "F01A.wav", "notes.wav"):
        assert parse_shemo_name(bad) is None
    (tmp_path / "female").mkdir()
    sf.write(tmp_path / "female" / "F01H02.wav", np.ones(1600, np.float32) * 0.1, 16000)
    sf.write(tmp_path / "female" / "F01Q02.wav", np.ones(1600, np.float32) * 0.1, 16000)
    clips, bad = scan_shemo(tmp_path)
    assert [(c.label, c.speaker) for c in clips] == [("happiness", "F01")]
    assert bad == [str(tmp_path / "female" / "F01Q02.wav")]


def test_other_rates_and_stereo_come_out_16k_mono(tmp_path):
    t = np.arange(22050) / 22050
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 22050)
    wiggle = 0.1 * np.sin(np.arange(48000 * 2) / 7)
    stereo = np.stack([0.2 + wiggle, 0.4 + wiggle], axis=1).astype(np.float32)
    sf.write(tmp_path / "b.flac", stereo, 48000)
    a, b = read_audio(tmp_path / "a.wav"), read_audio(tmp_path / "b.flac")
    assert a.dtype == np.float32 and a.ndim == 1 and len(a) == 16000
    assert b.ndim == 1 and len(b) == 32000
    assert abs(float(np.median(b)) - 0.3) < 1e-3  # channels averaged


def test_unreadable_and_silent_files_are_skipped_or_fatal_with_strict(tmp_path):
    good = tmp_path / "F01A01.wav"
    sf.write(good, (0.2 * np.sin(np.arange(4000) / 5)).astype(np.float32), 16000)  # 0.25 s: padded to 0.5 s
    sf.write(tmp_path / "F01A02.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "F01A03.wav").write_bytes(b"not audio")
    clips, _ = scan_shemo(tmp_path)
    warnings = []
    kept, waves, skipped = data.load_clips(clips, strict=False, log=warnings.append)
    assert [c.path for c in kept] == [good] and len(waves[0]) == 8000
    assert sorted(skipped) == [str(tmp_path / "F01A02.wav"), str(tmp_path / "F01A03.wav")]
    assert any("silent" in w for w in warnings) and any("F01A03.wav" in w for w in warnings)
    with pytest.raises(UserError, match="F01A02.wav is silent"):
        data.load_clips(clips, strict=True)


def test_random_split_is_stratified_disjoint_and_complete():
    labels = ["a"] * 50 + ["b"] * 20 + ["c"] * 3
    s = split_random(labels, seed=1)
    assert sorted(s["train"] + s["val"] + s["test"]) == list(range(73))
    assert Counter(labels[i] for i in s["test"]) == {"a": 5, "b": 2, "c": 1}
    assert s == split_random(labels, seed=1) and s != split_random(labels, seed=2)
    with pytest.raises(UserError, match="class 'd' has 2"):
        split_random(labels + ["d", "d"], seed=0)


def test_speaker_split_shares_no_speaker_and_keeps_classes_even():
    rng = np.random.default_rng(0)
    speakers = [f"S{s:02d}" for s in range(20) for _ in range(30)]
    labels = [str(x) for x in rng.integers(0, 4, len(speakers))]
    s = split_by_speaker(labels, speakers, seed=0)
    owners = {k: {speakers[i] for i in v} for k, v in s.items()}
    assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"]) \
        and not (owners["val"] & owners["test"])
    assert sorted(sum(s.values(), [])) == list(range(len(labels)))
    assert 0.7 < len(s["train"]) / len(labels) < 0.9 and s["val"] and s["test"]
    with pytest.raises(UserError, match="speaker"):
        split_by_speaker(labels[:3], [None, None, None], seed=0)


def test_balancing_copies_only_training_clips_up_to_the_largest_class():
    labels = ["a"] * 7 + ["b"] * 3 + ["c"] * 1
    plan = balance_plan(labels, seed=0)
    after = Counter(labels) + Counter(labels[source] for source, _ in plan)
    assert set(after.values()) == {7}
    b_sources = [source for source, _ in plan if labels[source] == "b"]
    assert b_sources == [7, 8, 9, 7]  # the class's own clips in turn
    assert all(-2 <= d.semitones <= 2 and 0.85 <= d.rate <= 1.15 for _, d in plan)


def test_augmented_copies_are_cached_and_keyed_by_content_and_settings(tmp_path):
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(16000)).astype(np.float32) for _ in range(2)]
    plan = [(0, Augmentation(semitones=1.0, rate=0.9))]
    first = audio.augmented_copies(waves, plan, tmp_path)
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == len(plan) and abs(len(first[0]) - 16000 / 0.9) < 200  # stretched: length changes
    again = audio.augmented_copies(waves, plan, tmp_path)
    assert np.array_equal(first[0], again[0]) and sorted(tmp_path.glob("*.npy")) == files
    other = [(0, Augmentation(semitones=1.0, rate=1.1))]
    audio.augmented_copies(waves, other, tmp_path)
    changed = [waves[0] + 0.01] + waves[1:]
    audio.augmented_copies(changed, plan, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == len(files) + 2  # new settings and new audio: new entries
    audio.augmented_copies(waves, plan, tmp_path, method="signalsmith")
    assert len(list(tmp_path.glob("*.npy"))) == len(files) + 3  # another backend: another entry


def test_absurd_samples_long_clips_and_silence_are_named(tmp_path):
    huge = tmp_path / "F01A01.wav"
    sf.write(huge, np.array([3e38, -3e38] * 8000, np.float32), 16000, subtype="FLOAT")  # finite, but not audio
    long = tmp_path / "F01A02.wav"
    sf.write(long, (0.1 * np.sin(np.arange(70 * 8000) / 3)).astype(np.float32), 8000)  # 70 s
    with pytest.raises(ValueError, match=r"F01A01.wav holds absurdly large samples \(peak 3e\+38"):
        read_audio(huge)
    said = []
    kept, waves, skipped = data.load_clips(scan_shemo(tmp_path)[0], strict=False, log=said.append)
    assert skipped == [str(huge)] and [c.path for c in kept] == [long]
    assert len(waves[0]) == audio.MAX_SECONDS * audio.SAMPLE_RATE  # cut to its first 60 s, and named
    assert any(f"{long} lasts 70.0 s; only its first 60 s are used" in line for line in said)


def test_damaged_cached_copies_are_named_and_made_again(tmp_path):
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(16000)).astype(np.float32)]
    plans = [[(0, Augmentation(semitones=s, rate=1.0))] for s in (-1.0, 0.5, 1.5)]
    good = [audio.augmented_copies(waves, plan, tmp_path)[0] for plan in plans]
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == 3
    by_name = {f: f.read_bytes() for f in files}
    files[0].write_bytes(by_name[files[0]][:100])  # truncated
    files[1].write_bytes(b"")  # empty
    nan = np.load(files[2])
    nan[5] = np.nan
    np.save(files[2], nan)  # NaN-filled
    said = []
    again = [audio.augmented_copies(waves, plan, tmp_path, log=said.append)[0] for plan in plans]
    assert all(np.array_equal(a, b) for a, b in zip(good, again))
    assert sorted(said) == sorted(f"warning: cached copy {f} is damaged ({why}); computing it again" for f, why in
                                  zip(files, ("unreadable: ValueError", "unreadable: EOFError", "NaN or infinite samples")))
    assert all(f.read_bytes() == by_name[f] for f in files)  # rebuilt in place


def test_the_check_before_training_reads_the_samples(tmp_path):
    from ser.synthetic import write_shemo
    write_shemo(tmp_path / "ok", per_class=3, letters="AN")
    assert data.check_shemo(tmp_path / "ok") == {"anger": 3, "neutral": 3}
    write_shemo(tmp_path / "silent", per_class=3, letters="AN")
    for f in (tmp_path / "silent").rglob("*.wav"):
        sf.write(f, np.zeros(8000, np.float32), 16000)
    with pytest.raises(UserError, match=r"0 usable ShEMO-named clips \(none\); unusable: 6 is silent"):
        data.check_shemo(tmp_path / "silent")
