"""run_all.sh's scheduler (jobs on stdin as run_all.sh lists them), exit status 0, 1 (a job failed) or 130
(stopped). Each job is forked from this process, which imported torch and transformers once: about 7 s of
CPU saved per experiment (NOTES.md). It is still a process of its own, as `python -m MODULE ARGS` would be,
but runs no atexit handler. This process never initialises CUDA: CUDA_VISIBLE_DEVICES picks a job's GPU.
  python -m common.jobs [--slots N] [--gpus 0,1] [--logs DIR] [--preload MODULE,...] [--dry-run] < jobs"""
import argparse
import contextlib
import ctypes
import importlib
import os
import runpy
import shlex
import signal
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Job:
    name: str
    dir: str  # its output folder (its train.log, if any, is named on failure)
    after: int  # the index of the job it waits for, -1 for none
    module: str
    args: list[str]


def read_jobs(data: bytes) -> list[Job]:
    """NUL-separated: a name, an output folder, `after`, the number of words in its command, the command."""
    words, jobs, i = [os.fsdecode(w) for w in data.split(b"\0")[:-1]], [], 0
    while i < len(words):
        name, folder, after, n = words[i:i + 4]
        i += 4 + int(n)
        jobs.append(Job(name, folder, int(after), words[i - int(n)], words[i - int(n) + 1:i]))
    return jobs


def run_job(job: Job, log: Path | None, gpu: str | None, handlers: dict, mask, scheduler: int) -> None:
    """In the forked child: `python -m job.module job.args`, then exit with its status."""
    code = 1
    try:
        with contextlib.suppress(AttributeError, OSError):  # (Linux) a SIGTERM if the scheduler dies, even killed
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != scheduler:  # (it died before that)
            return
        for s, handler in handlers.items():  # the signals as the scheduler found them, before one can arrive
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        if log is not None:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1), os.dup2(fd, 2), os.close(fd)
        sys.argv = [job.module, *job.args]
        runpy.run_module(job.module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:  # as the interpreter ends on it: None is 0, a message is printed with status 1
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:  # its threads (a checkpoint write) end first, as multiprocessing's forked processes do
            threading._shutdown()
            sys.stdout.flush(), sys.stderr.flush()
        finally:
            os._exit(code)  # (whatever happens: this copy of the scheduler must never go on)


def say(*lines: str, file=None) -> None:  # print, unless the terminal or pipe is gone: the jobs are still waited for
    with contextlib.suppress(OSError):
        print(*lines, sep="\n", file=file or sys.stdout, flush=True)


def last_words(log: Path) -> list[str]:
    """A failed job's error line from its console log, or its last lines."""
    with contextlib.suppress(OSError):
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        return errors[-1:] or ["  (it printed no error line; its last output:)", *(f"  | {x}" for x in lines[-3:])]
    return []


def run(jobs: list[Job], slots: int = 1, gpus: list[str] | None = None, logs: Path | None = None) -> int:
    """Run the jobs; a failure starts nothing new, and every job started is waited for. A stop signal
    goes on to the running jobs as SIGTERM (each keeps its last finished epoch's checkpoint)."""
    gpus, side_by_side = gpus or [], slots > 1
    state, running = ["waiting"] * len(jobs), {}  # running: pid -> (job, slot)
    free, failed, stop = list(range(min(slots, len(jobs)))), [], False
    log_of = {j: logs / f"{job.name.replace(' ', '-')}.log" for j, job in enumerate(jobs)} if side_by_side else {}
    if side_by_side:
        logs.mkdir(parents=True, exist_ok=True)

    def on_stop(signum, frame):  # (once: a terminal's Ctrl-C may come with run_all.sh's SIGTERM)
        nonlocal stop
        if not stop:
            stop = True
            for pid in running:
                with contextlib.suppress(ProcessLookupError):  # (one that ended since os.wait returned)
                    os.kill(pid, signal.SIGTERM)

    # (a signal ignored when this process started, as SIGINT in a job started by a script: still ignored)
    handlers = {s: signal.getsignal(s) for s in STOPS}
    for s in [s for s, handler in handlers.items() if handler is not signal.SIG_IGN]:
        signal.signal(s, on_stop)
    try:
        while True:
            ready = [j for j, job in enumerate(jobs)
                     if state[j] == "waiting" and (job.after < 0 or state[job.after] == "ok")]
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)  # (a stop waits until a new job is in `running`)
            start = bool(ready and free and not stop and not failed)
            if start:
                j, slot = ready[0], free.pop(0)
                gpu = gpus[slot] if gpus else None
                say(f"== [{j + 1}/{len(jobs)}] {jobs[j].name} -> {jobs[j].dir}" + (f" (GPU {gpu})" if gpu else "")
                    + (f"; output in {log_of[j]}" if side_by_side else ""))  # (flushed: a fork copies buffers)
                scheduler, pid = os.getpid(), os.fork()
                if pid == 0:
                    run_job(jobs[j], log_of.get(j), gpu, handlers, mask, scheduler)
                running[pid], state[j] = (j, slot), "running"
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if start:
                continue
            if not running:
                break
            pid, status = os.wait()
            if pid not in running:  # (a child that is not a job: the shell's writer of the job list, say)
                continue
            (j, slot), code = running.pop(pid), os.waitstatus_to_exitcode(status)
            free.append(slot)
            if code == 0:
                state[j] = "ok"
                if side_by_side:
                    say(f"== done: {jobs[j].name}")
            elif stop:  # stopped by the SIGTERM passed on to it
                state[j] = "interrupted"
            else:
                state[j] = "failed"
                failed.append(j)
                why = (f"killed by signal {-code} ({signal.Signals(-code).name.removeprefix('SIG')})" if code < 0
                       else "interrupted" if code == 130 else f"exit status {code}")
                log = Path(jobs[j].dir, "train.log")  # (none where a job failed before its run began)
                say(f"run_all.sh: experiment {jobs[j].name} failed ({why})" + (f"; see {log}" if log.exists() else ""),
                    *([*last_words(log_of[j]), f"  (its console output: {log_of[j]})"] if side_by_side else []),
                    file=sys.stderr)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if failed and not stop:
        say(f"run_all.sh: {len(failed)} experiment(s) failed; the others finished or were not started", file=sys.stderr)
    return 130 if stop else 1 if failed else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--gpus", default="", help="one GPU id per slot, comma-separated")
    p.add_argument("--logs", type=Path, help="each job's console output, when jobs run side by side")
    p.add_argument("--preload", default="", help="more modules to import once (those the jobs import late)")
    p.add_argument("--dry-run", action="store_true", help="print each job's command line instead")
    args = p.parse_args(argv)
    for f in (sys.stdout, sys.stderr):  # (a path's bytes printed as they are, whatever the locale)
        f.reconfigure(errors="surrogateescape")
    jobs = read_jobs(sys.stdin.buffer.read())
    if args.dry_run:
        return say(*(f"{job.name}: {shlex.join([sys.executable, '-m', job.module, *job.args])}" for job in jobs))
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # (a CUDA check at import asks NVML, not CUDA)
    # Warnings that do not apply: Python 3.12's at a fork with threads (the other is numpy's OpenBLAS pool, seen with
    # gdb, which stops and restarts around a fork); runpy's that a job's module was imported first (on purpose).
    warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
    warnings.filterwarnings("ignore", ".* found in sys.modules after import of package", RuntimeWarning)
    for module in dict.fromkeys([j.module for j in jobs] + [m for m in args.preload.split(",") if m]):
        with contextlib.suppress(Exception, SystemExit):  # (a job whose module fails to import fails on its own)
            importlib.import_module(module)
    gpus = [g for g in args.gpus.split(",") if g]
    sys.exit(run(jobs, len(gpus) or args.slots, gpus, args.logs))


if __name__ == "__main__":
    main()
