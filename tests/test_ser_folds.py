"""Speaker-independent folds (ser/folds.py, ser/splits.py's fold_split): no speaker in two splits
of a fold, every clip tested once, the folds' summary, through the command line."""
import csv
import json

import numpy as np
import pytest


def test_speaker_folds_share_no_speaker_and_test_every_clip_once():
    from ser.splits import fold_split, speaker_folds
    rng = np.random.default_rng(0)
    speakers = [f"{'FM'[s % 2]}{s:02d}" for s in range(12) for _ in range(10)]
    labels = [str(x) for x in rng.integers(0, 3, len(speakers))]
    folds = speaker_folds(labels, speakers, 4, seed=0)
    owners = [{speakers[i] for i in f} for f in folds]
    assert all(not (owners[i] & owners[j]) for i in range(4) for j in range(i + 1, 4))
    assert sorted(sum(folds, [])) == list(range(len(labels)))
    for k in range(1, 5):
        parts = fold_split(labels, speakers, k, 4, seed=0)
        assert parts["test"] == folds[k - 1] and parts["val"] == folds[k % 4]
        split_owners = {name: {speakers[i] for i in idx} for name, idx in parts.items()}
        assert not (split_owners["train"] & split_owners["test"]) and not (split_owners["train"] & split_owners["val"])


def test_folds_through_the_command_line(tiny_hubert, tmp_path):
    from ser.synthetic import write_shemo
    from ser.train import main
    write_shemo(tmp_path / "data", per_class=6, speakers=6, letters="AN")
    out = tmp_path / "folds"
    main(["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
          "--split", "speaker", "--folds", "3", "--no-balance", "--lr", "1e-3"])
    m = json.loads((out / "metrics.json").read_text())
    tested = []
    for k in (1, 2, 3):
        rows = list(csv.DictReader(open(out / f"fold{k}" / "split.csv")))
        owners = {}
        for r in rows:
            owners.setdefault(r["speaker"], set()).add(r["split"])
        assert all(len(v) == 1 for v in owners.values())  # no speaker in two splits of a fold
        tested += [r["path"] for r in rows if r["split"] == "test"]
    assert sorted(tested) == sorted(str(p) for p in (tmp_path / "data").rglob("*.wav"))  # every clip tested once
    assert m["pooled"]["intervals"]["accuracy"][0] <= m["pooled"]["accuracy"] <= m["pooled"]["intervals"]["accuracy"][1]
    assert set(m["by_gender"]) == {"F", "M"} and sum(g["items"] for g in m["by_gender"].values()) == len(tested)
    assert m["mean"]["accuracy"] == pytest.approx(np.mean([f["test_accuracy"] for f in m["per_fold"]]))
    assert "speakers train/val/test" in (out / "report.txt").read_text()
    main(["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
          "--split", "speaker", "--folds", "3", "--no-balance", "--lr", "1e-3", "--resume"])  # finished: skipped
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "x"),
              "--folds", "3"])
    assert e.value.code == 2  # --folds needs --split speaker
