"""A run's output folder (docs/reliability.md): its lock (`fcntl.flock` on OUT/.lock, released however
the process ends; run_all.sh takes it too), the marker of a folder this project wrote, and --overwrite;
and the folders the generators (nli/ser.synthetic) may write into."""
import fcntl
import os
import re
import shutil
import time
from pathlib import Path

from common.errors import UserError

LOCK = ".lock"
MARKER = ".run-marker"
# What a run writes into its folder, by name (nli.train, ser.train and its folds, nli.prune_curve)
OUTPUTS = frozenset({
    "config.json", "train.log", "steps.csv", "history.csv", "predictions.csv", "metrics.json", "report.txt",
    "split.csv", "prune_curve.csv", "folds.csv", "checkpoint.json", "model", "curves.png", "confusion_matrix.png",
    "token_lengths.png", "label_counts.png", "confusion_matrix_train.png", "confusion_matrix_val.png",
    "confusion_matrix_test.png", "class_distribution.png", "clip_lengths.png", "prune_curve.png",
    "head_importance.png"})
CHECKPOINT = re.compile(r"checkpoint-epoch[0-9]+\.pt(\.sha256)?")  # common/checkpoint.py's files
TEMPORARY = re.compile(r"\.(.+)\.[0-9]+\.(tmp|old)")  # .<name>.<pid>.tmp|old: common/files.py's atomic writes
# Kept by --overwrite: the marker (the folder stays a run's), SER's augmented clips (named by their content)
KEEP = (MARKER, "cache")


class RunLock:
    """Hold OUT/.lock exclusively while the run is alive (use as a context manager)."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def __enter__(self):
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.file = open(self.out / LOCK, "a+", encoding="utf-8")
        except OSError as e:
            raise UserError(f"--out {self.out}: cannot create or write it ({e.strerror or e})") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise UserError(f"--out {self.out} is in use by another run (process {holder}); wait for it to "
                            "end, or give another --out") from None
        self.file.truncate(0)  # (appended after: the file is open for appending)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.file.close()  # closing releases the lock


def contents(out: Path) -> list[Path]:
    """What the folder holds besides its lock file."""
    return [p for p in out.iterdir() if p.name != LOCK] if out.is_dir() else []


def is_run(out: Path) -> bool:
    """The folder holds a run this project wrote (its marker)."""
    return (Path(out) / MARKER).is_file()


def claim(folders: list[Path], maker: str) -> str | None:
    """Take the folders for the files `maker` (nli.synthetic, ser.synthetic) overwrites: None when each is new, empty
    or `maker`'s from before (its .made-by file), else why not, none touched: nothing a user made is overwritten."""
    for folder in folders:
        mark = folder / ".made-by"
        if folder.exists() and not folder.is_dir():
            return f"{folder} is a file, not a folder"
        if contents(folder) and not (mark.is_file() and mark.read_text().strip() == maker):
            return f"{folder} holds files {maker} did not make; give a new or empty folder"
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # (a file on its path, a read-only parent)
            return f"{folder} cannot be created ({e.strerror or e})"
        (folder / ".made-by").write_text(maker + "\n")
    return None


def check_out_dir(out: Path, resume: bool, overwrite: bool, reads: tuple = ()) -> None:
    """A non-empty --out needs this project's marker and --resume or --overwrite (which spares `reads`)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if not contents(out):
        return
    if not is_run(out):
        raise UserError(f"--out {out} is not empty and holds no run of this project (no {MARKER} file); "
                        "refusing to write into it or delete anything there; give a new or empty folder")
    if not (resume or overwrite):
        raise UserError(f"--out {out} is not empty; pass --resume to continue it or --overwrite to replace it")
    if overwrite:
        for path in reads:
            if path and Path(path).exists() and Path(path).resolve().is_relative_to(out.resolve()):
                raise UserError(f"--overwrite would delete {path}, which this run reads; give another --out")


def write_marker(out: Path, program: str) -> None:
    if not is_run(out):
        (out / MARKER).write_text(f"This folder holds a run written by {program} ({time.strftime('%Y-%m-%d %H:%M')})."
                                  "\n--overwrite may empty it of what the run wrote. Delete this file to protect it.\n",
                                  encoding="utf-8")


def output(name: str) -> bool:
    """A name a run writes: one of OUTPUTS or a checkpoint."""
    return name in OUTPUTS or CHECKPOINT.fullmatch(name) is not None


def half_written(name: str) -> bool:
    """The temporary name of an output, which a killed run may leave behind."""
    temporary = TEMPORARY.fullmatch(name)
    return temporary is not None and output(temporary.group(1))


def checkpoint_file(name: str) -> bool:
    """A checkpoint, its .sha256, or one half-written (what removing the checkpoints removes)."""
    temporary = TEMPORARY.fullmatch(name)
    return CHECKPOINT.fullmatch(temporary.group(1) if temporary else name) is not None


def owned(path: Path) -> bool:
    """A run wrote this entry: an output, a half-written one, or a nested run folder with its own marker."""
    return output(path.name) or half_written(path.name) or (path.is_dir() and is_run(path))


def empty_out_dir(out: Path) -> list[str]:
    """Delete what an earlier run wrote in out (a folder with the marker); returns the names left in place."""
    if not is_run(out):
        raise UserError(f"{out} holds no run of this project (no {MARKER} file); refusing to delete anything there")
    left = []
    for path in [p for p in contents(out) if p.name not in KEEP]:
        if not owned(path):
            left.append(path.name)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return sorted(left)


def model_of_run(given: str, program: str) -> Path:
    """The model/ folder a finished run wrote, given that folder or the run folder holding it."""
    path = Path(given)
    if (path / "model" / "config.json").exists():
        return path / "model"
    if not path.is_dir():
        raise UserError(f"--model {given}: no such folder; give the model/ folder of a finished {program} run")
    if (path / "fold1" / "model" / "config.json").exists():
        raise UserError(f"--model {given} holds a --folds run, one model per fold: give one of them, like "
                        f"{path / 'fold1' / 'model'}")
    if is_run(path) or (path / "train.log").exists():
        raise UserError(f"--model {given} holds a run that has not finished (no model/ yet); resume it with "
                        "--resume, or wait for it to end")
    if not (path / "config.json").exists():
        raise UserError(f"--model {given}: no config.json there; give the model/ folder of a finished {program} run")
    return path
