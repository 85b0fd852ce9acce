"""Which differences are real: bootstrap intervals, McNemar's exact test and Holm's correction on
hand-made predictions with known answers; one rule for absent classes; speaker folds that share no
speaker; the leak split of the study's test split; the hypothesis-only baseline; the pruning
budget chosen on validation."""
import csv
import json
from math import comb

import numpy as np
import pytest

from common.metrics import report_text, summarize
from common.stats import accuracy_interval, holm, intervals, mcnemar, paired


def test_an_interval_holds_the_estimate_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 800):
        true = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.7, true, (true + 1) % 3)  # about 70% right
        figures, ci = summarize(true, pred, ["a", "b", "c"]), intervals(true, pred, 3)
        for k in ("accuracy", "uar", "macro_f1"):
            assert ci[k][0] <= figures[k] <= ci[k][1], (n, k)
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
        assert intervals(true, pred, 3) == ci  # seeded: the same predictions, the same interval
    assert widths[1] < widths[0] / 2  # 16 times the items: about a quarter of the width
    assert accuracy_interval(np.ones(30)) == [1.0, 1.0]
    # several seeds on the same items: the interval of the seed-averaged figure
    true = np.array([0, 1, 2, 0, 1, 2] * 10)
    seeds = np.stack([true, np.where(np.arange(60) % 4 == 0, (true + 1) % 3, true)])
    both = intervals(true, seeds, 3)
    assert both["accuracy"][0] <= (1 + 0.75) / 2 <= both["accuracy"][1]


def test_mcnemar_and_holm_give_the_known_p_values():
    a = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8, dtype=bool)  # 10 only A right, 2 only B right
    b = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8, dtype=bool)
    exact = 2 * sum(comb(12, k) for k in range(3)) / 2**12  # two-sided binomial, 2 of 12 at p = 1/2
    result = mcnemar(a, b)
    assert (result["only_a"], result["only_b"]) == (10, 2) and result["p"] == pytest.approx(exact)  # 0.0386
    assert mcnemar(a, a)["p"] == 1.0  # no disagreement: nothing to test
    diff = paired(a, b)
    assert diff["difference"] == pytest.approx(8 / 50) and diff["interval"][0] <= 0.16 <= diff["interval"][1]
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])


def test_one_rule_for_a_class_the_split_does_not_hold():
    true, pred = [0, 0, 1, 1], [0, 1, 1, 1]  # class 2 absent from the split
    m = summarize(true, pred, ["x", "y", "z"])
    recall = (0.5 + 1.0) / 2
    f1 = (2 / 3 + 0.8) / 2
    assert m["uar"] == pytest.approx(recall) and m["macro_f1"] == pytest.approx(f1) and m["absent"] == ["z"]
    text = report_text(true, pred, ["x", "y", "z"])
    assert "macro averages over the 2 classes this split holds; absent: z" in text
    macro = next(line for line in text.splitlines() if line.strip().startswith("macro avg"))
    assert f"{recall:.4f}" in macro and f"{f1:.4f}" in macro


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


def test_the_leak_split_of_the_studys_test_split_adds_up(tiny_hubert, tmp_path):
    from ser.synthetic import write_shemo
    from ser.train import main
    write_shemo(tmp_path / "data", per_class={"A": 12, "N": 8, "S": 5}, speakers=4)
    out = tmp_path / "study"
    main(["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
          "--protocol", "study", "--cache-dir", str(tmp_path / "cache")])
    m = json.loads((out / "metrics.json").read_text())
    leak, test = m["test_leak"], m["split_items"]["test"]
    assert leak["original clips"]["items"] + leak["augmented copies"]["items"] == test["items"]
    assert leak["source clip also in training"]["items"] + leak["source clip not in training"]["items"] == test["items"]
    assert leak["augmented copies"]["items"] == test["augmented"]
    rows = [r for r in csv.DictReader(open(out / "predictions.csv")) if r["split"] == "test"]
    seen = [r for r in rows if "train" in r["source_also_in"].split(";")]
    right = sum(r["true"] == r["predicted"] for r in seen)
    assert leak["source clip also in training"]["accuracy"] == pytest.approx(right / len(seen))
    overall = sum(g["accuracy"] * g["items"] for k, g in leak.items() if k in ("original clips", "augmented copies")
                  and g["items"])
    assert overall / test["items"] == pytest.approx(m["test"]["accuracy"])
    assert "the leak inside this test split" in (out / "report.txt").read_text()


def test_hypothesis_only_tokenises_no_premise(tiny_bert, farstail_dir, tmp_path):
    from nli import predict
    from nli.data import encode, load_tokenizer, read_split
    from nli.train import main
    tok = load_tokenizer(str(tiny_bert))
    split = read_split(farstail_dir / "Val-word.csv")
    alone, pair = encode(tok, split, 200, hypothesis_only=True), encode(tok, split, 200)
    for i in range(len(split)):
        n = int(alone.lengths[i])
        assert alone.ids[i, :n].tolist() == tok(split.hypothesis[i])["input_ids"]  # [CLS] h [SEP], nothing else
        assert alone.types[i].sum() == 0 and n < int(pair.lengths[i])
    out = tmp_path / "run"
    main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(out), "--epochs", "1",
          "--hypothesis-only", "--lr", "1e-3"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["experiment"] == "hypothesis-only" and set(m["test_subsets"]) >= {"hard_hypothesis", "hard_overlap"}
    model, tokenizer = predict.load(str(out))
    assert model.config.hypothesis_only  # so predict feeds the hypothesis alone, as it was trained
    a = predict.probabilities(model, tokenizer, ["کتاب دانشجو است."], ["کتاب است."])
    b = predict.probabilities(model, tokenizer, ["شهر تهران بزرگ است."], ["کتاب است."])
    assert np.allclose(a.numpy(), b.numpy())  # the premise makes no difference


def test_the_pruning_budget_is_chosen_on_validation():
    from nli.prune_curve import budget
    whole = {"val_accuracy": 0.80, "test_accuracy": 0.70}
    rows = [{"fraction": 0.1, "heads_removed": 14, "val_accuracy": 0.80, "test_accuracy": 0.60},
            {"fraction": 0.2, "heads_removed": 29, "val_accuracy": 0.795, "test_accuracy": 0.71},
            {"fraction": 0.3, "heads_removed": 43, "val_accuracy": 0.70, "test_accuracy": 0.70}]
    chosen = budget(rows, whole)  # test falls at 0.1, but test never chooses: validation holds until 0.2
    assert chosen == {"heads": 29, "fraction": 0.2, "val_accuracy": 0.795, "test_accuracy": 0.71}
