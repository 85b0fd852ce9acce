"""run_all.sh when things go wrong, without the smoke run's fixture (so pytest's two workers can
share these out): failing experiments, a missing ShEMO, bad flags, one run_all.sh per folder, a
closed terminal, relative folders; and its scheduler (common/jobs.py) given jobs that fail, die,
wait for another or are stopped by a signal."""
import fcntl
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.jobs import Job, run
from tests.test_run_all import ROOT, run_all


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The smoke run's NLI inputs, made with run_all.sh --smoke's command line (the tests using them pass --only nli)."""
    from nli.synthetic import main
    path = tmp_path_factory.mktemp("inputs")
    main(["--data", str(path / "farstail"), "--model", str(path / "tiny-bert"), "--rows", "480", "80", "80"])
    (path / "done").touch()
    return path


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
    for name in ("nli all seed 0", "nli freeze9 seed 0"):  # (a bad input is refused before a train.log is written)
        assert f"experiment {name} failed (exit status 2)\n" in result.stderr
    assert "unknown label 'q'" in result.stderr and "2 experiment(s) failed" in result.stderr
    assert "[1/9]" in result.stdout and "[3/9]" in result.stdout  # the curve waits for 'all'; it never ran
    assert "[2/9]" not in result.stdout and "[4/9]" not in result.stdout
    assert run_all("--gpus", "0,x", "--only", "nli").returncode == 2


def test_one_run_all_per_folder_and_a_closed_terminal_stops_and_waits_for_its_job(inputs, tmp_path):
    """SIGHUP (a closed terminal) to run_all.sh: passed on to the running experiment, which stops at its
    next step and keeps its checkpoint; run_all.sh waits for it, says so, and releases the lock."""
    shutil.copytree(inputs, tmp_path / "inputs")
    log = tmp_path / "nli/all/seed0/train.log"
    first = subprocess.Popen(["bash", str(ROOT / "run_all.sh"), "--smoke", "--only", "nli", "--out", str(tmp_path)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "SHEMO_DIR": ""})
    try:
        wait_for(log, seconds=60)  # (the experiment has started; it trains for seconds more)
        second = run_all("--smoke", "--only", "nli", "--out", tmp_path)
        assert second.returncode == 2 and f"in use by another run_all.sh (process {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "[1/9]" not in second.stdout
        first.send_signal(signal.SIGHUP)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130 and "interrupted; run the same command again" in err, err[-2000:]
    assert "failed" not in err and "[2/9]" not in err
    assert log.read_text().splitlines()[-1] == "interrupted; resume with --resume"  # stopped, not left behind
    assert not (tmp_path / "nli/all/seed0/metrics.json").exists()
    with open(tmp_path / ".lock") as f:  # released: no job of it lives on holding it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A module the scheduler can run: `fakejob fail`, `die`, `sleep SECONDS MARK` (stops on SIGTERM, as every
    experiment does), `signals FILE` (the handlers it found), `thread MARK` (a thread that ends after it)."""
    (tmp_path / "fakejob.py").write_text(
        "import os, signal, sys, threading, time\n"
        "if sys.argv[1] == 'fail':\n    print('error: bad data', file=sys.stderr)\n    sys.exit(2)\n"
        "if sys.argv[1] == 'die':\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        "if sys.argv[1] == 'sleep':\n    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        "    open(sys.argv[3] + '.started', 'w').close()\n"
        "    time.sleep(float(sys.argv[2]))\n    open(sys.argv[3], 'w').close()\n"
        "if sys.argv[1] == 'signals':\n    open(sys.argv[2], 'w').write(' '.join(getattr(signal.getsignal(s), "
        "'__name__', '?') for s in (signal.SIGTERM, signal.SIGHUP)))\n"
        "if sys.argv[1] == 'thread':\n    threading.Thread(target=lambda: (time.sleep(0.3), open(sys.argv[2], 'w')))"
        ".start()\n")
    monkeypatch.syspath_prepend(tmp_path)  # (the forked jobs inherit it)
    return lambda name, *args, after=-1: Job(name, str(tmp_path / name), after, "fakejob", list(args))


def test_a_failing_experiment_stops_the_scheduler_and_names_its_log(job, capfd):
    """One job at a time: the first failure stops it; the job's own error line is on the terminal, and its
    train.log is named where it wrote one."""
    assert run([job("a", "fail"), job("b", "sleep", "0", "never")]) == 1
    out, err = capfd.readouterr()
    assert "experiment a failed (exit status 2)\n" in err and "error: bad data" in err
    assert "1 experiment(s) failed" in err and "[2/2]" not in out
    Path(job("a").dir).mkdir()
    (Path(job("a").dir) / "train.log").touch()
    assert run([job("a", "fail")]) == 1
    assert f"experiment a failed (exit status 2); see {job('a').dir}/train.log\n" in capfd.readouterr().err


def test_a_job_that_dies_without_a_word_is_reported_and_the_running_one_is_waited_for(job, tmp_path, capfd):
    mark = tmp_path / "slow-job-finished"
    jobs = [job("slow", "sleep", "2", str(mark)), job("dies", "die"), job("next", "sleep", "0", str(mark) + "2")]
    assert run(jobs, slots=2, logs=tmp_path / "logs") == 1
    out, err = capfd.readouterr()
    assert mark.exists()  # it returned only after the running job had finished
    assert "experiment dies failed (killed by signal 9 (KILL))" in err and "it printed no error line" in err
    assert f"(its console output: {tmp_path / 'logs/dies.log'})" in err and "2 experiment(s)" not in err
    assert "[3/3]" not in out  # nothing new started


def test_a_job_waits_for_the_job_it_needs_and_a_stop_signal_reaches_the_running_one(job, tmp_path, capfd):
    mark = tmp_path / "slow-job-finished"
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append(a))  # (fails the test if run() had no handler)
    stopper = threading.Thread(target=lambda: (wait_for(Path(f"{mark}.started")), os.kill(os.getpid(), signal.SIGTERM)))
    stopper.start()
    try:
        code = run([job("a", "sleep", "0.5", str(tmp_path / "a-done")), job("b", "sleep", "30", str(mark), after=0),
                    job("c", "sleep", "0", str(tmp_path / "c-done"))], slots=2, logs=tmp_path / "logs")
    finally:
        stopper.join()
        signal.signal(signal.SIGTERM, previous)
    out, err = capfd.readouterr()
    assert out.index("[3/3]") < out.index("[2/3]")  # b waited for a, though a slot was free for it
    assert (tmp_path / "a-done").exists() and (tmp_path / "c-done").exists()
    assert code == 130 and not seen  # (run_all.sh says "interrupted": the SIGHUP test above)
    assert not mark.exists() and "failed" not in err  # b was stopped


def test_a_forked_job_finds_the_signals_as_they_were_and_its_threads_end_first(job, tmp_path):
    def guard(*a):
        raise AssertionError("the scheduler's own handler was missing")

    def hup_guard(*a):
        raise AssertionError("the scheduler's own handler was missing")
    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, guard), (signal.SIGHUP, hup_guard))}
    try:
        assert run([job("s", "signals", str(tmp_path / "found")), job("t", "thread", str(tmp_path / "ended"))]) == 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert (tmp_path / "found").read_text() == "guard hup_guard"  # not the scheduler's on_stop
    assert (tmp_path / "ended").exists()  # the job's thread finished before the job's process ended


def test_a_stop_just_as_a_job_ends_still_reaches_the_others(job, tmp_path, monkeypatch):
    real_wait, sent = os.wait, []

    def wait():  # a job has ended and been reaped; a stop arrives before the scheduler has seen which
        pid, status = real_wait()
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        return pid, status
    monkeypatch.setattr(os, "wait", wait)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        code = run([job("a", "sleep", "0.5", str(tmp_path / "a-done")), job("b", "sleep", "30", str(tmp_path / "b-done"))],
                   slots=2, logs=tmp_path / "logs")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 130 and not (tmp_path / "b-done").exists()


def wait_for(path: Path, seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.05)):
        if path.exists():
            return
        time.sleep(0.05)


def test_run_all_flag_without_a_value_is_one_line():
    for flag in ("--seeds", "--out", "--slots"):
        result = run_all(flag)
        assert result.returncode == 2 and result.stderr.strip() == f"run_all.sh: {flag} needs " + \
            {"--seeds": "a number", "--out": "a folder", "--slots": "a number"}[flag] + " (see --help)"


def test_relative_out_and_shemo_are_read_from_where_the_command_is_given(shemo_dir, tmp_path):
    (tmp_path / "audio").symlink_to(shemo_dir)
    result = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--only", "ser", "--ser-protocols", "study", "--shemo",
                             "audio", "--out", "my  runs", "--dry-run"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "SHEMO_DIR": ""}, timeout=300)
    assert result.returncode == 0, result.stderr
    job = result.stdout.splitlines()[-1]  # what the one experiment would be asked to do (after the audio check)
    assert job.startswith("ser study seed 0: ") and "[1/1]" not in result.stdout
    words = shlex.split(job.removeprefix("ser study seed 0: "))  # (a command a user can paste)
    assert words[1:3] == ["-m", "ser.train"] and words[words.index("--data-dir") + 1] == f"{tmp_path}/audio"
    assert words[words.index("--out") + 1] == f"{tmp_path}/my  runs/ser/study/seed0"
    assert not (tmp_path / "my  runs").exists()  # a dry run makes nothing


def test_a_closed_pipe_on_the_terminal_stops_no_job(job, tmp_path, monkeypatch):
    """`run_all.sh | head`, a killed tee, a lost ssh session: the jobs still run and are waited for."""
    class Gone(io.TextIOBase):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", Gone())
    monkeypatch.setattr(sys, "stderr", Gone())
    marks = [tmp_path / "a-done", tmp_path / "b-done"]
    jobs = [job("a", "sleep", "0", str(marks[0])), job("b", "sleep", "0", str(marks[1])), job("c", "fail", after=0)]
    assert run(jobs, slots=2, logs=tmp_path / "logs") == 1  # c failed after a; it said so where it could
    assert all(m.exists() for m in marks)


def test_a_number_of_folds_with_a_leading_zero_is_that_number():
    result = run_all("--ser-folds", "08", "--only", "ser")
    assert result.returncode == 2 and result.stderr.startswith("run_all.sh: ShEMO not found"), result.stderr
    for bad in ("2", "0x8", "000"):
        result = run_all("--ser-folds", bad, "--only", "ser")
        assert result.returncode == 2 and result.stderr.strip() == \
            "run_all.sh: --ser-folds takes a number of folds, 3 or more (see --help)", bad


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_job_is_stopped_when_its_scheduler_is_killed(job, tmp_path):
    """`kill -9` of the scheduler (an out-of-memory kill, say): its running job gets SIGTERM and stops, as
    an experiment stops at its next step, instead of living on without it (holding its folder's lock)."""
    mark = tmp_path / "job-finished"
    words = ("a", str(tmp_path / "a"), "-1", "4", "fakejob", "sleep", "1.5", str(mark))  # (as run_all.sh lists it)
    scheduler = subprocess.Popen([sys.executable, "-m", "common.jobs"], cwd=ROOT, stdin=subprocess.PIPE,
                                 env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    scheduler.stdin.write(b"".join(w.encode() + b"\0" for w in words))
    scheduler.stdin.close()
    wait_for(Path(f"{mark}.started"), seconds=60)
    scheduler.kill()
    scheduler.wait()
    time.sleep(2)  # (the job would have finished by now)
    assert Path(f"{mark}.started").exists() and not mark.exists()


def test_a_killed_scheduler_is_reported_as_an_interruption(tmp_path):
    """The scheduler killed (its jobs then stop, the test above): run_all.sh says how to continue, exit 130."""
    python = tmp_path / "python"  # (run_all.sh's PYTHON: this one is killed as it starts the scheduler)
    python.write_text(f'#!/bin/bash\n[ "$1 $2" = "-m common.jobs" ] && kill -9 $$\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    result = run_all("--only", "nli", "--out", tmp_path / "runs", env={"PYTHON": str(python)})
    assert result.returncode == 130 and "interrupted; run the same command again" in result.stderr, result.stderr
