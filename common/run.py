"""The opening every run shares: the output-folder rules, the run log, provenance.

    with Run(spec, d, fingerprint=..., reads=...) as run:   # lock --out, check it; nothing written
        if run.finished: return               # --resume found this very run finished (same arguments, inputs)
        ...read and check the inputs (log lines are kept in memory)...
        run.begin()                           # the marker; --overwrite empties --out now; train.log opens

Under torchrun only rank 0 checks and writes --out; the others follow it (docs/reliability.md).
"""
import importlib.metadata
import platform
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import FINISHED, check_same_args, recorded_config, remove_checkpoints
from common.device import choose_attention_kernels, choose_cuda_graphs, choose_device, choose_precision
from common.distributed import Dist, broadcast
from common.errors import RunFailed, UserError, log_errors_to
from common.inputs import refuse_changed
from common.outdir import RunLock, check_out_dir, contents, empty_out_dir, half_written, is_run, write_marker
from common.rng import seed_everything
from common.spec import RunSpec


class RunLog:
    """Prints a line and appends it to train.log (kept until the file is open); `quiet`: log nothing."""

    def __init__(self, quiet: bool = False):
        self.path, self.pending, self.quiet = None, [], quiet

    def __call__(self, *parts) -> None:
        if not self.quiet:
            line = " ".join(str(p) for p in parts)
            print(line, flush=True)
            self.file_only(line)

    def file_only(self, line: str) -> None:
        """Write a line to train.log only (per-step figures that the progress bar shows; rank 0's)."""
        if self.path is None:
            self.pending.append(line)
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:
            raise RunFailed(f"cannot write {self.path}: {e.strerror or e}") from None

    def open(self, path: Path) -> None:
        if not self.quiet:
            self.path, pending, self.pending = path, self.pending, []
            for line in pending:
                self.file_only(line)
            log_errors_to(path)


class Run:
    """One run's output folder, log, device, precision, graphs, seed; `reads`: paths --overwrite must spare."""

    def __init__(self, spec: RunSpec, d: Dist | None = None, *, fingerprint, reads: tuple = ()):
        # --out is free on resume: the marker in the folder says it is a run, so a moved folder resumes
        self.spec, self.out = replace(spec, free=spec.free | {"out"}), spec.out
        self.d, self.fingerprint, self.reads = d or Dist(), fingerprint, reads
        self.log, self.finished, self.lock = RunLog(quiet=not self.d.main), False, None

    def __enter__(self):
        if self.d.main:
            try:
                check_out_dir(self.out, self.spec.resume, self.spec.overwrite, self.reads)
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
        if not self.finished:
            self.device = choose_device(self.spec.device, self.d.local_rank if self.d.active else None)
            self.dtype = choose_precision(self.spec.amp, self.device)
            self.use_graphs, self.graphs_why = choose_cuda_graphs(self.spec.cuda_graphs, self.device, self.dtype,
                                                                  self.d)
            choose_attention_kernels(self.device)
            seed_everything(self.spec.seed)
        return self

    def _open(self):
        """With --resume: refuse a run of other arguments; skip one finished with the same inputs."""
        check_out_dir(self.out, self.spec.resume, self.spec.overwrite, self.reads)  # again, now that we hold the lock
        if not self.spec.resume:
            return
        if (self.out / "train.log").exists():
            log_errors_to(self.out / "train.log")  # the run's own log: a refusal belongs in it too
        old, self.finished = recorded_config(self.out), (self.out / FINISHED).exists()
        if self.finished and old is None:
            raise UserError(f"{self.out} has {FINISHED} but no config.json; give another --out, or --overwrite")
        if old is not None:
            check_same_args(old["args"], self.spec.args, self.spec.free, str(self.out))
        if self.finished:
            refuse_changed(old.get("inputs"), self.fingerprint(), f"the finished run in {self.out}",
                           "Its results belong to the old inputs: run it again with --overwrite, or give another --out")
            remove_checkpoints(self.out)  # left behind if a run was stopped right after finishing
            self.log(f"{self.out} already holds this finished run; nothing to do")

    def begin(self) -> None:
        """The inputs are checked: mark --out as a run, empty it for --overwrite, open train.log."""
        if not self.d.main:
            return
        left = empty_out_dir(self.out) if self.spec.overwrite and is_run(self.out) else []
        try:
            write_marker(self.out, self.spec.program)
        except OSError as e:
            raise RunFailed(f"cannot write {self.out}: {e.strerror or e}") from None
        for stale in [p for p in contents(self.out) if half_written(p.name)]:  # a killed run's (we hold the lock)
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        self.log.open(self.out / "train.log")
        if left:
            self.log(f"--overwrite left in place what no run wrote: {', '.join(left)}")

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
    for name in ("scikit-learn", "torchaudio", "audiomentations", "soundfile", "librosa"):
        info[name] = package_version(name)
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


def package_version(name: str) -> str:
    """An installed package's version, read without importing it ("not installed" when absent)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def count_params(model: torch.nn.Module) -> dict:
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
