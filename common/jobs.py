"""run_all.sh's scheduler: its experiments, up to --slots side by side, in the order given, a job
starting once the job it waits for has finished.

Each job is a forked copy of this process, which has imported the jobs' modules (torch, transformers,
the model code) once: a job starts at once instead of spending about 7 s of CPU on imports (NOTES.md),
which was most of a smoke run. A forked job is still a process of its own, as `python -m MODULE ARGS`
would be: its own exit status, signals and output (OUT/logs/<job>.log when jobs run side by side).
This process never initialises CUDA, so each job picks its GPU through CUDA_VISIBLE_DEVICES.

Jobs come on stdin, NUL-separated: name, output folder, the index of the job it waits for (-1: none),
the number of words in its command, then the command (the module, then its arguments).
  python -m common.jobs [--slots N] [--gpus 0,1] [--logs DIR] [--preload MODULE,...] < jobs
Exit status: 0, 1 when an experiment failed, 130 when interrupted (Ctrl-C, SIGTERM, SIGHUP).
"""
import argparse
import importlib
import os
import runpy
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Job:
    name: str
    dir: str  # its output folder (its train.log is named on failure)
    after: int  # the index of the job it waits for, -1 for none
    module: str
    args: list[str]


def read_jobs(data: bytes) -> list[Job]:
    words = [os.fsdecode(w) for w in data.split(b"\0")[:-1]]
    jobs = []
    while words:
        name, folder, after, n = words[:4]
        command, words = words[4:4 + int(n)], words[4 + int(n):]
        jobs.append(Job(name, folder, int(after), command[0], command[1:]))
    return jobs


def why(code: int) -> str:
    """How a job ended, from os.waitstatus_to_exitcode (negative: the signal that killed it)."""
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name.removeprefix('SIG')})"
    return "interrupted" if code == 130 else f"exit status {code}"


def run_job(job: Job, log: Path | None, gpu: str | None, handlers: dict) -> None:
    """In the forked child: run `python -m job.module job.args` here and exit with its status."""
    code = 1
    try:
        for s, handler in handlers.items():  # the signals as this process found them, not its own
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
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
        for t in threading.enumerate():  # as at the interpreter's exit: its threads (a checkpoint write) end first
            if t is not threading.current_thread() and not t.daemon:
                t.join()
        for f in (sys.stdout, sys.stderr):
            f.flush()
        os._exit(code)


def last_words(log: Path) -> list[str]:
    """A failed job's error line from its console log, or its last lines."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1:]
    return ["  (it printed no error line; its last output:)", *(f"  | {line}" for line in lines[-3:])]


def run(jobs: list[Job], slots: int = 1, gpus: list[str] | None = None, logs: Path | None = None) -> int:
    """Run the jobs; a failure starts nothing new, and every job started is waited for. A stop signal
    goes on to the running jobs as SIGTERM (each keeps its last finished epoch's checkpoint)."""
    gpus = gpus or []
    side_by_side = slots > 1
    if side_by_side:
        logs.mkdir(parents=True, exist_ok=True)
    state = ["waiting"] * len(jobs)
    running: dict[int, tuple[int, int]] = {}  # pid -> (job, slot)
    free, failed, stop = list(range(slots)), [], False

    def on_stop(signum, frame):  # (once: a terminal's Ctrl-C may come with run_all.sh's SIGTERM)
        nonlocal stop
        if not stop:
            stop = True
            for pid in running:
                os.kill(pid, signal.SIGTERM)

    handlers = {s: signal.signal(s, on_stop) for s in STOPS}
    try:
        while True:
            ready = [j for j, job in enumerate(jobs) if state[j] == "waiting"
                     and (job.after < 0 or state[job.after] == "ok")]
            if ready and free and not stop and not failed:
                j, slot = ready[0], free.pop(0)
                log = logs / f"{jobs[j].name.replace(' ', '-')}.log" if side_by_side else None
                gpu = gpus[slot] if gpus else None
                print(f"== [{j + 1}/{len(jobs)}] {jobs[j].name} -> {jobs[j].dir}" + (f" (GPU {gpu})" if gpu else "")
                      + (f"; output in {log}" if log else ""), flush=True)
                sys.stderr.flush()
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)  # (a stop now reaches this job too)
                pid = os.fork()
                if pid == 0:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                    run_job(jobs[j], log, gpu, handlers)
                running[pid], state[j] = (j, slot), "running"
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                continue
            if not running:
                break
            pid, status = os.wait()
            if pid not in running:  # (a child that is not a job: the shell's writer of the job list, say)
                continue
            j, slot = running.pop(pid)
            free.append(slot)
            code = os.waitstatus_to_exitcode(status)
            if code == 0:
                state[j] = "ok"
                if side_by_side:
                    print(f"== done: {jobs[j].name}", flush=True)
            elif stop:  # stopped by the SIGTERM passed on to it
                state[j] = "interrupted"
            else:
                state[j] = "failed"
                failed.append(j)
                lines = [f"run_all.sh: experiment {jobs[j].name} failed ({why(code)}); see {jobs[j].dir}/train.log"]
                if log := (logs / f"{jobs[j].name.replace(' ', '-')}.log" if side_by_side else None):
                    lines += [*last_words(log), f"  (its console output: {log})"]
                print(*lines, sep="\n", file=sys.stderr, flush=True)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if stop:
        print("run_all.sh: interrupted; run the same command again to continue (finished experiments are skipped, "
              "the others resume from their last finished epoch)", file=sys.stderr)
        return 130
    if failed:
        print(f"run_all.sh: {len(failed)} experiment(s) failed; the others finished or were not started",
              file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--gpus", default="", help="one GPU id per slot, comma-separated")
    p.add_argument("--logs", type=Path, help="each job's console output, when jobs run side by side")
    p.add_argument("--preload", default="", help="more modules to import once (those the jobs import late)")
    args = p.parse_args(argv)
    jobs = read_jobs(sys.stdin.buffer.read())
    # (should an import ask whether CUDA is there, NVML answers: CUDA stays uninitialised for the forked jobs)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    for module in dict.fromkeys([j.module for j in jobs] + [m for m in args.preload.split(",") if m]):
        try:
            importlib.import_module(module)
        except Exception:  # (a job whose module does not import fails in its own process, with its own message)
            pass
    gpus = [g for g in args.gpus.split(",") if g]
    sys.exit(run(jobs, len(gpus) or args.slots, gpus, args.logs))


if __name__ == "__main__":
    main()
