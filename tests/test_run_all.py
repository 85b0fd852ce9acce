"""run_all.sh as a user runs it: the offline smoke run end to end (two jobs side by side on the
CPU, --slots 2, which is also what makes it fit the suite's time), the same figures as a
sequential run, skipping finished runs, stopping on a failure, refusing to start without ShEMO;
and the summary's tables."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from common.summary import write_summary
from nli import study as nli_study
from ser import study as ser_study

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = [e.name for e in nli_study.EXPERIMENTS]
PROTOCOLS = [p.name for p in ser_study.PROTOCOLS]


def run_all(*args, env=None):
    env = {**os.environ, "SHEMO_DIR": "", **(env or {})}
    return subprocess.run(["bash", str(ROOT / "run_all.sh"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    result = run_all("--smoke", "--slots", "2", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_smoke_run_writes_every_experiment_and_the_summary(smoke):
    out, result = smoke
    n = len(EXPERIMENTS) + 1 + len(PROTOCOLS) + 1  # +1: the pruning curve; +1: the speaker folds (smoke: 3)
    assert f"[{n}/{n}] ser leak-free-speaker-folds seed 0" in result.stdout
    for name in EXPERIMENTS:
        run = out / "nli" / name / "seed0"
        m = json.loads((run / "metrics.json").read_text())
        assert m["experiment"] == name
        for f in ("report.txt", "curves.png", "confusion_matrix.png", "token_lengths.png", "model/config.json"):
            assert (run / f).exists(), (name, f)
    assert json.loads((out / "nli/freeze12/seed0/metrics.json").read_text())["params"]["trainable"] < \
        json.loads((out / "nli/freeze9/seed0/metrics.json").read_text())["params"]["trainable"]
    for name in PROTOCOLS:
        ser = json.loads((out / f"ser/{name}/seed0/metrics.json").read_text())
        assert ser["class_counts"]["before"] != ser["class_counts"]["after"]  # the smoke data are uneven
        assert {"accuracy", "uar", "macro_f1"} <= set(ser["test"])
    summary = (out / "summary.md").read_text()
    assert "SMOKE RUN" in summary and "What shows learning: NLI" in summary and "and SER" in summary
    def test_accuracy(run):
        return json.loads((out / run / "seed0/metrics.json").read_text())["test"]["accuracy"]
    learned = test_accuracy("ser/leak-free-random")
    assert learned >= 0.8, learned  # what the sentence claims (chance: 1/6)
    learned, frozen = test_accuracy("nli/all"), test_accuracy("nli/freeze12")
    assert learned >= 0.9 and frozen <= 0.5, (learned, frozen)  # (chance: 1/3)
    assert "missing" not in summary.lower() and "upper bound" not in summary
    for name in EXPERIMENTS:
        assert f"| {name} | ours |" in summary and f"nli/{name}/seed0/report.txt" in summary
    for name in PROTOCOLS:
        assert f"| {name} | ours |" in summary and f"ser/{name}/seed0/confusion_matrix_test.png" in summary
    assert (out / "summary.png").exists() and "![test accuracy, ours beside the study's](summary.png)" in summary
    assert summary.index("**Findings**") < summary.index("## NLI") < summary.index("**Our additions**")
    for line in (x for x in summary.splitlines() if x.startswith("|")):  # at most 9 columns, short cells
        assert line.count("|") <= 10 and all(len(c) <= 62 for c in line.split("|")), line
    assert "**Measured on these runs**" in summary and "| split | entailment | contradiction | neutral |" in summary
    assert "train loss (Trainer's log)" in summary and "here steps 51-60" in summary  # 60 steps logged every 10
    row = next(line for line in summary.splitlines() if line.startswith("| all | ours |"))
    logged = json.loads((out / "nli/all/seed0/metrics.json").read_text())["train"]["trainer_logged_last"]
    assert f"| {logged:.4f} |" in row
    curve = out / "nli/all/seed0/prune_curve"
    assert (curve / "prune_curve.png").exists() and "![pruning curve](nli/all/seed0/prune_curve/prune_curve.png)" in summary
    budget = json.loads((curve / "metrics.json").read_text())["head_budget"]
    line = next(x for x in summary.splitlines() if x.startswith("Heads that can go before validation accuracy falls"))
    assert f"importance {budget['importance']['heads']} (test {budget['importance']['test_accuracy']:.4f});" in line
    assert f"random {budget['random']['heads']} (test" in line
    # the statistics: intervals, paired tests against `all` (Holm), the leak inside the study's split, the folds
    test = json.loads((out / "nli/freeze9/seed0/metrics.json").read_text())["test"]
    low, high = test["intervals"]["accuracy"]
    row = next(line for line in summary.splitlines() if line.startswith("| freeze9 | ours |"))
    assert f"{test['accuracy']:.4f} [{low:.4f}, {high:.4f}]" in row and "McNemar" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| freeze9 | ") and "| ours |" not in line)
    assert "(Holm " in row  # our additions: the paired test against `all`
    assert "| hypothesis-only | ours |" in summary
    leak = json.loads((out / "ser/study/seed0/metrics.json").read_text())["test_leak"]
    assert "**The leak inside the study's own test split**" in summary and f"over {leak['augmented copies']['items']}" \
        in summary
    folds = json.loads((out / "ser/leak-free-speaker-folds/seed0/metrics.json").read_text())
    assert "`leak-free-speaker-folds`: 3 speaker-independent folds" in summary and "**Speaker-independent folds**" \
        in summary and f"{folds['mean']['accuracy']:.4f} ± {folds['std']['accuracy']:.4f}" in summary
    low, high = folds["pooled"]["intervals"]["accuracy"]  # the pooled figure stands beside its own interval
    assert f"| leak-free-speaker-folds | ours |  |  | {folds['pooled']['accuracy']:.4f} [{low:.4f}, {high:.4f}] |" in summary


def test_summary_averages_seeds_and_lists_missing_runs(smoke, tmp_path):
    out, _ = smoke
    for seed, acc in ((0, 0.5), (1, 0.7)):
        run = tmp_path / "nli" / "all" / f"seed{seed}"
        shutil.copytree(out / "nli/all/seed0", run)
        m = json.loads((run / "metrics.json").read_text())
        m["test"]["accuracy"], m["test"]["intervals"]["accuracy"] = acc, [acc - 0.1, acc + 0.1]
        (run / "metrics.json").write_text(json.dumps(m))
        (run / "predictions.csv").unlink()  # (it would no longer match the edited accuracy: a damaged run)
    missing = write_summary(tmp_path, ["nli.study"], seeds=2)
    summary = (tmp_path / "summary.md").read_text()
    assert "0.6000 ± 0.1414" in summary  # mean and sample std of 0.5 and 0.7
    assert "nli/freeze9/seed0" in missing and "nli/all/seed0" not in missing
    assert "**Missing results**" in summary and "| freeze9 | ours: missing |" in summary


def test_summary_gives_every_study_figure_and_every_difference(smoke):
    out, _ = smoke
    summary = (out / "summary.md").read_text()
    for e in [e for e in nli_study.EXPERIMENTS if e.study]:
        row = next(line for line in summary.splitlines() if line.startswith(f"| {e.name} | ours |"))
        study_row = summary.splitlines()[summary.splitlines().index(row) + 1]
        cells = [c.strip() for c in study_row.split("|")[1:-1]]
        assert cells[:2] == ["", "study"]
        assert cells[2:2 + len(nli_study.STUDY_CELLS)] == [nli_study.study_cell(e.study, c) for c in nli_study.STUDY_CELLS]
        for note in e.notes:
            assert note in summary
    # the study's pruning is masking: its row stands between our head removal and our run of its method
    lines = summary.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| prune0.5 | ours |"))
    assert lines[at + 1].startswith("|  | study |") and lines[at + 2].startswith("| prune0.5-masking | ours |")
    assert "the study's row beside it: its pruning, 50% of attention weight entries masked" in summary
    for value in ser_study.PUBLISHED.values():
        assert f"{value:.3f}" in summary
    for line in nli_study.DIFFERENCES + ser_study.DIFFERENCES:
        assert f"- {line}" in summary


def test_the_experiment_lists_have_one_source():
    """run_all.sh reads the lists from nli/study.py and ser/study.py (the smoke test counts the runs it made)."""
    listed = subprocess.run(["python", "-m", "nli.study", "--list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert [line.split("\t")[0] for line in listed.splitlines()] == EXPERIMENTS


def test_side_by_side_runs_give_the_figures_of_a_sequential_run_and_a_rerun_skips_it(smoke, tmp_path):
    """--slots 2 gave each job one CPU thread (2 cores / 2 slots); the same thread count, one job
    at a time, gives the same numbers; and a second run_all.sh skips the finished run."""
    out, result = smoke
    assert "output in" in result.stdout and (out / "logs" / "ser-study-seed-0.log").exists()
    shutil.copytree(out / "inputs", tmp_path / "inputs")
    seq = run_all("--smoke", "--only", "ser", "--ser-protocols", "study", "--out", tmp_path,
                  env={"OMP_NUM_THREADS": "1"})
    assert seq.returncode == 0, seq.stderr[-2000:]
    a, b = (json.loads((d / "ser/study/seed0/metrics.json").read_text()) for d in (out, tmp_path))
    for split in ("train", "val", "test"):
        assert a[split] == b[split], split
    # run again: the finished run is skipped, untouched, and the protocols not asked for are not missing
    before = (tmp_path / "ser/study/seed0/metrics.json").stat().st_mtime_ns
    again = run_all("--smoke", "--only", "ser", "--ser-protocols", "study", "--out", tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already holds this finished run" in again.stdout and "[1/1] ser study seed 0" in again.stdout
    assert "missing" not in (tmp_path / "summary.md").read_text().lower()
    assert (tmp_path / "ser/study/seed0/metrics.json").stat().st_mtime_ns == before


# SIGTERM: a scheduler's stop; SIGHUP: a closed terminal (Ctrl-C sends SIGINT: the same path)


