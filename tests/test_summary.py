"""common/summary.py and the study sections: seed-averaged intervals on each seed's own items, a
run whose files disagree or have another shape listed as damaged (never a traceback, never a
number), the rows asked for, and words where a figure has no interval."""
import csv
import json
import shutil

import numpy as np
import pytest

from common.stats import intervals
from common import summary as summary_md
from common.summary import write_summary
from nli.train import main as nli_main


def run(labels_true, labels_pred, items):
    """A run record as Report.runs gives it: its test figures and its predictions."""
    names = ["a", "b"]
    true, pred = np.array([names.index(x) for x in labels_true]), np.array([names.index(x) for x in labels_pred])
    acc = float((true == pred).mean())
    return {"test": {"accuracy": acc, "uar": acc, "macro_f1": acc, "per_class": {n: {} for n in names}},
            "_test": [{"item": i, "true": t, "predicted": p} for i, t, p in zip(items, labels_true, labels_pred)]}


def test_seeds_that_tested_different_items_are_scored_against_their_own_labels():
    # two seeds, each with its own test split (as the leak-free protocols draw them), each predicting it perfectly
    seed0 = run(list("aabbab"), list("aabbab"), ["x1", "x2", "x3", "x4", "x5", "x6"])
    seed1 = run(list("bbaaba"), list("bbaaba"), ["y1", "y2", "y3", "y4", "y5", "y6"])
    cells = summary_md.test_cells([seed0, seed1], summary_md.test_intervals([seed0, seed1]))
    assert cells["accuracy"] == "1.0000 ± 0.0000 [1.0000, 1.0000]"  # seed 0's labels would give about [0, 0.3]
    # on the same items every seed's predictions are resampled together, as before
    seed1_same = run(list("aabbab"), list("abbbab"), ["x1", "x2", "x3", "x4", "x5", "x6"])
    cells = summary_md.test_cells([seed0, seed1_same], summary_md.test_intervals([seed0, seed1_same]))
    low, high = intervals([0, 0, 1, 1, 0, 1], [[0, 0, 1, 1, 0, 1], [0, 1, 1, 1, 0, 1]], 2)["accuracy"]
    assert cells["accuracy"].endswith(f"[{low:.4f}, {high:.4f}]") and low < high


def test_run_sets_whose_seeds_test_different_items_are_not_paired():
    # the leak-free protocols draw each seed's test split with its seed: no item-by-item test between them
    # (a seed-averaged correctness over different items meant nothing, or raised when the sizes differed)
    random = [run(list("aabbab"), list("aabbab"), [f"x{i}" for i in range(6)]),
              run(list("ab"), list("ab"), ["y0", "y1"])]
    speaker = [run(list("abba"), list("abbb"), [f"z{i}" for i in range(4)]),
               run(list("bab"), list("bab"), ["w0", "w1", "w2"])]
    assert summary_md.comparisons("random", {"random": random, "speaker": speaker}) == {}
    same = [run(list("aabbab"), list("abbbab"), [f"x{i}" for i in range(6)])] * 2
    assert set(summary_md.comparisons("same", {"same": same, "also": same})) == {"also"}


def test_one_test_item_gets_no_interval_but_a_word():
    runs = [run(["a"], ["a"], ["x"]), run(["a"], ["b"], ["x"])]
    cells = summary_md.test_cells(runs, summary_md.test_intervals(runs))
    assert "[no interval: fewer than 2 items]" in cells["accuracy"]


@pytest.fixture(scope="module")
def finished(tiny_bert, farstail_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("summary") / "run"
    nli_main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(out), "--limit", "16",
              "--batch-size", "8", "--epochs", "1", "--trainer-logging-steps", "1000"])
    return out


def runs_folder(finished, tmp_path, experiments=("all", "freeze9")):
    for name in experiments:
        shutil.copytree(finished, tmp_path / "nli" / name / "seed0")
    return tmp_path


def edit_predictions(folder, change):
    path = folder / "predictions.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["split"] == "test":
            change(r)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_an_edited_predictions_file_makes_its_run_damaged_not_a_difference(finished, tmp_path):
    root = runs_folder(finished, tmp_path)
    edit_predictions(root / "nli/freeze9/seed0", lambda r: r.update(predicted=r["true"]))  # every pair "right"
    missing = write_summary(root, ["nli.study"])
    summary = (root / "summary.md").read_text()
    assert any(m.startswith("nli/freeze9/seed0 (its predictions.csv gives test accuracy 1.0000") for m in missing)
    assert "| freeze9 | ours: missing |" in summary
    assert "p 2.22e-16" not in summary


def test_labels_in_another_case_or_another_shape_are_damaged_runs(finished, tmp_path):
    root = runs_folder(finished, tmp_path, ("all", "freeze9", "freeze12"))
    edit_predictions(root / "nli/freeze9/seed0", lambda r: r.update(true=r["true"].capitalize()))
    m = json.loads((root / "nli/freeze12/seed0/metrics.json").read_text())
    m["test"] = [m["test"]["accuracy"]]  # a file of another shape
    (root / "nli/freeze12/seed0/metrics.json").write_text(json.dumps(m))
    missing = write_summary(root, ["nli.study"])
    damaged = next(m for m in missing if m.startswith("nli/freeze9/seed0"))
    assert "its predictions.csv holds labels the run does not have: " in damaged and "Entailment" in damaged
    assert "nli/freeze12/seed0 (its metrics.json has no test.accuracy of the right kind)" in missing
    assert "| all | ours |" in (root / "summary.md").read_text()


def test_the_summary_says_the_runs_own_logging_window_and_lists_only_the_rows_asked_for(finished, tmp_path):
    root = runs_folder(finished, tmp_path, ("all",))
    missing = write_summary(root, ["nli.study:all"], seeds=2)
    summary = (root / "summary.md").read_text()
    assert "fewer than 1000 steps" in summary and "fewer than 500" not in summary  # the run's own --trainer-logging-steps
    assert missing == ["nli/all/seed1"] and "freeze9" not in summary.split("## What differs")[0]
    assert "| all (seed 0: 1 of 2) | ours |" in summary


def test_seed_averaged_mcnemar_says_the_rule_it_uses(finished, tmp_path):
    from common.stats import paired
    # an item right in exactly half of the seeds counts as right, and the summary says so in those words
    assert paired([0.5, 0.5, 1.0], [0.0, 0.0, 1.0])["only_a"] == 2
    for name in ("all", "freeze9"):
        for seed in (0, 1):
            shutil.copytree(finished, tmp_path / "nli" / name / f"seed{seed}")
    write_summary(tmp_path, ["nli.study:all,freeze9"], seeds=2)
    summary = (tmp_path / "summary.md").read_text()
    assert "at least half of its seeds get it right (a tie counts as right)" in summary and "most seeds" not in summary


@pytest.mark.parametrize("bounds", [None, [0.1], ["a", "b"], [0.9, 0.1], [0.8, 0.9]])
def test_an_interval_that_cannot_be_the_runs_is_a_damaged_run_not_a_traceback(finished, tmp_path, bounds):
    root = runs_folder(finished, tmp_path, ("all", "freeze9"))
    path = root / "nli/freeze9/seed0/metrics.json"
    m = json.loads(path.read_text())
    m["test"]["intervals"]["accuracy"] = bounds  # missing, short, words, reversed, or not around the figure
    path.write_text(json.dumps(m))
    missing = write_summary(root, ["nli.study"])
    assert "nli/freeze9/seed0 (its metrics.json's test.intervals.accuracy is not an interval around its figure)" \
        in missing
    assert "| freeze9 | ours: missing |" in (root / "summary.md").read_text()
