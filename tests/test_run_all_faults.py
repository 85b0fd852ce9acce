"""run_all.sh when things go wrong, without the smoke run's fixture (each builds its own tiny
inputs, so pytest's two workers can share these out): a failing or dying experiment, a missing
ShEMO, bad flags, one run_all.sh per folder, Ctrl-C / SIGTERM / SIGHUP, relative folders."""
import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_run_all import ROOT, fake_python, run_all


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The smoke run's NLI inputs, made with run_all.sh --smoke's command line (the tests using them pass --only nli)."""
    from nli.synthetic import main
    path = tmp_path_factory.mktemp("inputs")
    main(["--data", str(path / "farstail"), "--model", str(path / "tiny-bert"), "--rows", "480", "80", "80"])
    (path / "done").touch()
    return path


def test_failing_experiment_stops_the_script_and_names_its_log(inputs, tmp_path):
    """One job at a time: the first failure stops the script (a real failure's message is relayed:
    the side-by-side test below)."""
    shutil.copytree(inputs, tmp_path / "inputs")
    env = fake_python(tmp_path, "  *nli.train*/nli/all/*) echo 'error: bad data' >&2; exit 2 ;;")
    result = run_all("--smoke", "--only", "nli", "--out", tmp_path, env=env)
    assert result.returncode == 1
    assert "experiment nli all seed 0 failed (exit status 2)" in result.stderr
    assert "nli/all/seed0/train.log" in result.stderr and "error: bad data" in result.stderr
    assert not (tmp_path / "summary.md").exists() and not (tmp_path / "nli/freeze9").exists()


def test_missing_shemo_stops_before_any_training(tmp_path):
    result = run_all("--out", tmp_path / "runs")
    assert result.returncode == 2
    assert "--shemo" in result.stderr and "SHEMO_DIR" in result.stderr and "--only nli" in result.stderr
    assert not (tmp_path / "runs").exists()
    assert run_all("--only", "both").returncode == 2


def test_side_by_side_failures_name_each_experiment_and_start_nothing_new(inputs, tmp_path):
    shutil.copytree(inputs, tmp_path / "inputs")
    val = tmp_path / "inputs/farstail/Val-word.csv"
    val.write_text(val.read_text(encoding="utf-8").replace("\te\n", "\tq\n", 1), encoding="utf-8")
    result = run_all("--smoke", "--only", "nli", "--slots", "2", "--out", tmp_path)
    assert result.returncode == 1
    for name, folder in (("nli all seed 0", "nli/all/seed0"), ("nli freeze9 seed 0", "nli/freeze9/seed0")):
        assert f"experiment {name} failed (exit status 2); see {tmp_path / folder}/train.log" in result.stderr
    assert "unknown label 'q'" in result.stderr and "2 experiment(s) failed" in result.stderr
    assert "[1/9]" in result.stdout and "[3/9]" in result.stdout  # the curve waits for 'all'; it never ran
    assert "[2/9]" not in result.stdout and "[4/9]" not in result.stdout
    assert run_all("--gpus", "0,x", "--only", "nli").returncode == 2


def test_a_job_that_dies_without_a_word_is_reported_and_the_running_one_is_waited_for(inputs, tmp_path):
    shutil.copytree(inputs, tmp_path / "inputs")
    mark = tmp_path / "slow-job-finished"
    env = fake_python(tmp_path, f'  *nli.train*/nli/all/*) sleep 3; touch {mark}; exit 0 ;;\n'
                                f'  *nli.train*/nli/freeze9/*) kill -9 $$ ;;')
    result = run_all("--smoke", "--only", "nli", "--slots", "2", "--out", tmp_path, env=env)
    assert result.returncode == 1 and mark.exists()  # it exited only after the running job had finished
    assert "experiment nli freeze9 seed 0 failed (killed by signal 9 (KILL))" in result.stderr
    assert "it printed no error line" in result.stderr and "2 experiment(s)" not in result.stderr
    assert "[2/9]" not in result.stdout and "[4/9]" not in result.stdout  # nothing new started


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_one_run_all_per_folder_and_an_interrupt_stops_and_waits_for_its_jobs(tmp_path, stop):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "done").touch()  # (the first job never reads them: it is made to wait)
    mark = tmp_path / "slow-job-finished"
    env = {**os.environ, "SHEMO_DIR": "",
           **fake_python(tmp_path, f'  *nli.train*/nli/all/*) trap \'kill $s; exit 143\' TERM; echo > {mark}.started; '
                                   f'sleep 30 & s=$!; wait $s; touch {mark}; exit 0 ;;')}
    first = subprocess.Popen(["bash", str(ROOT / "run_all.sh"), "--smoke", "--only", "nli", "--out", str(tmp_path)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(300):
            if Path(f"{mark}.started").exists():
                break
            time.sleep(0.1)
        second = run_all("--smoke", "--only", "nli", "--out", tmp_path)
        assert second.returncode == 2 and f"in use by another run_all.sh (process {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "[1/9]" not in second.stdout
        first.send_signal(stop)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 130 and "interrupted; run the same command again" in err
    assert not mark.exists()  # the running job was stopped, not left behind
    assert "failed" not in err
    with open(tmp_path / ".lock") as f:  # released: no job of it lives on holding it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_run_all_flag_without_a_value_is_one_line():
    for flag in ("--seeds", "--out", "--slots"):
        result = run_all(flag)
        assert result.returncode == 2 and result.stderr.strip() == f"run_all.sh: {flag} needs " + \
            {"--seeds": "a number", "--out": "a folder", "--slots": "a number"}[flag] + " (see --help)"


def test_relative_out_and_shemo_are_read_from_where_the_command_is_given(shemo_dir, tmp_path):
    (tmp_path / "audio").symlink_to(shemo_dir)
    job = f'  *ser.train*) echo "$*" >> {tmp_path}/jobs; exit 0 ;;'  # (what the job was asked to do)
    env = {**os.environ, "SHEMO_DIR": "", **fake_python(tmp_path, job)}
    result = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--only", "ser", "--ser-protocols", "study", "--shemo",
                             "audio", "--out", "runs"], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    job = (tmp_path / "jobs").read_text()
    assert f"--data-dir {tmp_path}/audio " in job and f"--out {tmp_path}/runs/ser/study/seed0 " in job
    assert (tmp_path / "runs" / "summary.md").exists()


def test_a_number_of_folds_with_a_leading_zero_is_that_number():
    result = run_all("--ser-folds", "08", "--only", "ser")
    assert result.returncode == 2 and result.stderr.startswith("run_all.sh: ShEMO not found"), result.stderr
    for bad in ("2", "0x8", "000"):
        result = run_all("--ser-folds", bad, "--only", "ser")
        assert result.returncode == 2 and result.stderr.strip() == \
            "run_all.sh: --ser-folds takes a number of folds, 3 or more (see --help)", bad
