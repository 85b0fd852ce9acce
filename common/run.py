"""The opening every run shares: the output-folder rules, the run log, provenance.

    with Run(args, RESUME_FREE, d) as run:   # lock --out, check its state; nothing written yet
        if run.finished: return               # --resume found this very run finished
        ...read and check the inputs (log lines are kept in memory)...
        run.begin()                           # --overwrite empties --out now; train.log opens

Nothing is written into --out (but its lock file) until `begin()`, so a mistake found while
reading the inputs leaves the folder as it was and the corrected command is not refused.
Under torchrun (`d`, common/distributed.py) only rank 0 looks at and writes --out; the other
processes follow its decision and log nothing.
"""
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import RunLock, check_same_args, finished_run, recorded_args, remove_checkpoints
from common.device import choose_attention_kernels, choose_device, choose_precision
from common.distributed import Dist, broadcast
from common.errors import RunFailed, UserError, log_errors_to
from common.rng import seed_everything

LOCK = ".lock"


def folder_contents(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name != LOCK] if out.is_dir() else []


def looks_like_run(out: Path) -> bool:
    return (out / "train.log").exists() or (out / "config.json").exists()


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """A non-empty --out needs --resume (keep it) or --overwrite (empty it, which is allowed only
    for a folder that holds an earlier run: train.log or config.json inside)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if folder_contents(out):
        if overwrite and not looks_like_run(out):
            raise UserError(f"--overwrite: {out} does not look like a run folder (no train.log or config.json); "
                            "refusing to delete it")
        if not (resume or overwrite):
            raise UserError(f"--out {out} is not empty; pass --resume to continue it or --overwrite to replace it")


def empty_out_dir(out: Path) -> None:
    for path in folder_contents(out):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


class RunLog:
    """Prints a line and appends it to train.log. Lines logged before the log file is opened are
    kept and written first. (tqdm bars go to the terminal only.)"""

    def __init__(self, quiet: bool = False):
        self.path: Path | None = None
        self.pending: list[str] = []
        self.quiet = quiet  # the processes other than rank 0 of a torchrun job log nothing

    def __call__(self, *parts) -> None:
        if self.quiet:
            return
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.file_only(line)

    def file_only(self, line: str) -> None:
        """Write a line to train.log only (per-step figures that the progress bar shows)."""
        if self.quiet:
            return
        if self.path is None:
            self.pending.append(line)
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:
            raise RunFailed(f"cannot write {self.path}: {e.strerror or e}") from None

    def open(self, path: Path) -> None:
        if self.quiet:
            return
        self.path = path
        pending, self.pending = self.pending, []
        for line in pending:
            self.file_only(line)
        log_errors_to(path)


class Run:
    """One training run's output folder, log, device, precision and seed (see the module docstring)."""

    def __init__(self, args, free: set, d: Dist | None = None):
        self.args, self.free, self.out = args, free, args.out
        self.d = d or Dist()
        self.log = RunLog(quiet=not self.d.main)
        self.finished = False
        self.lock = None

    def __enter__(self):
        if self.d.main:
            try:
                check_out_dir(self.out, self.args.resume, self.args.overwrite)
                self.lock = RunLock(self.out).__enter__()
                self._open()
            except BaseException as e:
                broadcast(("error", str(e)))
                if self.lock:
                    self.lock.__exit__()
                raise
            broadcast(("ok", self.finished))
        else:  # follow rank 0, which checked --out (its error line is the job's one line)
            status, value = broadcast(None)
            if status == "error":
                raise SystemExit(2)
            self.finished = value
        self._choose()
        return self

    def _choose(self):
        if self.finished:
            return
        self.device = choose_device(self.args.device, self.d.local_rank if self.d.active else None)
        self.dtype = choose_precision(self.args.amp, self.device)
        choose_attention_kernels(self.device)
        seed_everything(self.args.seed)

    def _open(self):
        check_out_dir(self.out, self.args.resume, self.args.overwrite)  # again, now that we hold the lock
        if self.args.resume:
            if (self.out / "train.log").exists():
                log_errors_to(self.out / "train.log")  # the run's own log: a refusal belongs in it too
            if finished_run(self.out, self.args, self.free):
                remove_checkpoints(self.out)  # left behind if a run was stopped right after finishing
                self.log(f"{self.out} already holds this finished run; nothing to do")
                self.finished = True
                return
            old = recorded_args(self.out)
            if old is not None:
                check_same_args(old, self.args, self.free, str(self.out))

    def begin(self) -> None:
        """The inputs are checked: empty --out for --overwrite, open train.log (rank 0 only)."""
        if not self.d.main:
            return
        if self.args.overwrite:
            empty_out_dir(self.out)
        for stale in self.out.glob(".*.tmp"):  # half-written files of a killed run (we hold the lock)
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        self.log.open(self.out / "train.log")

    def __exit__(self, *exc):
        if self.lock:
            self.lock.__exit__()


def run_info(device: torch.device) -> dict:
    """Versions, git commit and hardware, written beside every result."""
    import transformers
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    for name in ("sklearn", "torchaudio", "audiomentations", "soundfile", "librosa"):
        mod = sys.modules.get(name)
        if mod is not None:
            info[name] = getattr(mod, "__version__", "?")
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_commit"] = (commit + ("-dirty" if dirty else "")) if commit else None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def count_params(model: torch.nn.Module) -> dict:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
