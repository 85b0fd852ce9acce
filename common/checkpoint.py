"""What makes a run safe to interrupt: one lock per output folder, verified checkpoints, and the
rule that says a run is finished.

- RunLock: an exclusive `fcntl.flock` on OUT/.lock held for the whole run. The OS releases it
  when the process ends, however it ends, so a killed run never leaves a stale lock; a second
  run on the same folder stops at once, naming the holder's process id.
- Checkpoint: after each finished epoch the whole training state is written to
  `checkpoint-epoch<N>.pt` (temporary file, fsync, rename) and its SHA-256 recorded in
  `checkpoint.json`, which keeps the newest two. `--resume` verifies a file's size and checksum
  before loading it (with `weights_only=True`); a damaged newest checkpoint falls back to the one
  before, and says so; if none is usable the run stops with one line saying what to do.
- Finished: a run is finished when `metrics.json` exists, the file written last, after the model,
  reports and plots; the checkpoints are removed after it (a leftover one is cleaned up by the
  next `--resume`).
"""
import fcntl
import hashlib
import json
import os
from pathlib import Path

import torch

from common.distributed import Dist, gather
from common.errors import RunFailed, UserError
from common.files import read_text, sha256, write_json
from common.rng import rng_state, set_rng_state

MANIFEST = "checkpoint.json"
FINISHED = "metrics.json"  # written last: its presence means every result file is in place


class RunLock:
    """Hold OUT/.lock exclusively while the run is alive (use as a context manager)."""

    def __init__(self, out: Path):
        self.out = out

    def __enter__(self):
        self.out.mkdir(parents=True, exist_ok=True)
        self.file = open(self.out / ".lock", "a+", encoding="utf-8")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise UserError(f"--out {self.out} is in use by another run (process {holder}); wait for it to end, "
                            "or give another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.file.close()  # closing releases the lock


# ---------------------------------------------------------------- arguments of a run
def _resolved(value):
    """Paths compared by where they point, however they are spelled."""
    if isinstance(value, Path) or (isinstance(value, str) and value and Path(value).exists()):
        return str(Path(value).resolve())
    return value


def args_record(args) -> dict:
    """The command-line arguments as JSON values, paths resolved, as config.json keeps them."""
    return {k: _resolved(v) for k, v in vars(args).items()}


def check_same_args(old: dict, args, free: set, where: str) -> None:
    """Refuse to continue a run in `where` whose recorded arguments differ from these (except `free`)."""
    new = args_record(args)
    changed = [k for k in new if k not in free and _resolved(old.get(k)) != new[k]]
    if changed:
        what = ", ".join(f"--{k.replace('_', '-')} {old.get(k)!r} there, {new[k]!r} now" for k in changed)
        raise UserError(f"{where} holds a run with other arguments ({what}); resume it with the same arguments, "
                        "or give another --out (--overwrite would delete it)")


def recorded_args(out: Path) -> dict | None:
    path = out / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(read_text(path))["args"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not readable; give another --out, or --overwrite to replace this run") from None


def finished_run(out: Path, args, free: set) -> bool:
    """True when out holds a finished run (metrics.json) of the same arguments (config.json)."""
    if not (out / FINISHED).exists():
        return False
    old = recorded_args(out)
    if old is None:
        raise UserError(f"{out} has {FINISHED} but no config.json; give another --out, or --overwrite")
    check_same_args(old, args, free, str(out))
    return True


# ---------------------------------------------------------------- checkpoints
class _HashingFile:
    """A writable file that also feeds every byte to SHA-256 (so the file is hashed once, as written)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data):
        self.sha.update(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def save_verified(path: Path, state: dict) -> dict:
    """torch.save into a temporary file, fsync, then rename: a process killed at any moment leaves
    no half-written file under this name. Returns {file, bytes, sha256} for the manifest."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            hashing = _HashingFile(f)
            torch.save(state, hashing)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise RunFailed(f"cannot write {path}: {getattr(e, 'strerror', None) or str(e).splitlines()[0]}") from None
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": hashing.sha.hexdigest()}


def load_verified(folder: Path, entry: dict) -> tuple[dict | None, str]:
    """(state, "") when the file matches its recorded size and SHA-256 and loads; else (None, why)."""
    path = folder / entry["file"]
    if not path.exists():
        return None, "missing"
    if path.stat().st_size != entry["bytes"]:
        return None, f"{path.stat().st_size} bytes, {entry['bytes']} recorded"
    if sha256(path) != entry["sha256"]:
        return None, "SHA-256 does not match the recorded one"
    try:
        return torch.load(path, map_location="cpu", weights_only=True), ""
    except Exception as e:  # a file that passed its checksum but still does not load: never use it
        return None, f"unreadable ({type(e).__name__})"


class Checkpoint:
    """The run's checkpoints in OUT: the state of every part given (model, optimizer, scaler:
    anything with state_dict/load_state_dict), every RNG (of every process under torchrun), the
    per-epoch results so far. Saved after each finished epoch by rank 0;
    the newest two are kept. Every process restores from the same verified file."""

    def __init__(self, args, free: set, d: Dist | None = None, **parts):
        self.out, self.args, self.free, self.parts = args.out, args, free, parts
        self.d = d or Dist()

    def _manifest(self) -> list[dict]:
        path = self.out / MANIFEST
        if not path.exists():
            return []
        try:
            entries = json.loads(read_text(path))["checkpoints"]
            assert all({"file", "epoch", "bytes", "sha256"} <= set(e) for e in entries)
            return entries
        except (ValueError, KeyError, TypeError, AssertionError):
            raise UserError(f"{path} is damaged, so no checkpoint can be verified; start the run over with "
                            "--overwrite, or give another --out") from None

    def restore(self, log) -> tuple[int, list, list]:
        """(first epoch to run, history, evals): from the newest good checkpoint with
        --resume, else a fresh start."""
        if not self.args.resume:
            return 1, [], []
        entries = self._manifest()
        recorded = {e["file"] for e in entries}
        for path in sorted(self.out.glob("checkpoint-epoch*.pt")):
            if path.name not in recorded:  # written, but the run stopped before recording it: never trusted
                log(f"warning: {path.name} is not recorded in {MANIFEST} (the run stopped while saving it); not used")
        if not entries:
            return 1, [], []
        damaged = []
        for entry in entries:
            state, why = load_verified(self.out, entry)
            if state is None:
                damaged.append(f"{entry['file']} ({why})")
                continue
            check_same_args(state["args"], self.args, self.free, f"the checkpoint in {self.out}")
            if state.get("world", 1) != self.d.world:
                raise UserError(f"the checkpoint in {self.out} was written by {state.get('world', 1)} process(es); "
                                f"resume it with the same number (this run has {self.d.world})")
            for name, part in self.parts.items():
                part.load_state_dict(state[name])
            set_rng_state(state["rng"][self.d.rank] if self.d.active else state["rng"])
            if damaged:
                log(f"warning: {'; '.join(damaged)} is damaged and was not used; resuming from {entry['file']}")
            log(f"resuming after epoch {state['epoch']} (checkpoint verified: sha256 {entry['sha256'][:12]}…)")
            return state["epoch"] + 1, state["history"], state["evals"]
        raise UserError(f"no usable checkpoint in {self.out}: {'; '.join(damaged)}. Nothing was trained; start the "
                        "run over with --overwrite (it deletes this folder's partial run), or put back a good copy")

    def save(self, epoch: int, history: list, evals: list) -> None:
        rngs = gather(rng_state())  # every process takes part; rank 0 writes
        if not self.d.main:
            return
        state = {"epoch": epoch, "args": args_record(self.args), "world": self.d.world,
                 "rng": rngs if self.d.active else rngs[0], "history": history, "evals": evals,
                 **{name: part.state_dict() for name, part in self.parts.items()}}
        entry = {"epoch": epoch, **save_verified(self.out / f"checkpoint-epoch{epoch}.pt", state)}
        keep = [entry] + [e for e in self._manifest() if e["file"] != entry["file"]][:1]
        write_json(self.out / MANIFEST, {"checkpoints": keep})
        for path in self.out.glob("checkpoint-epoch*.pt"):
            if path.name not in {e["file"] for e in keep}:
                path.unlink(missing_ok=True)

    def remove(self) -> None:
        if self.d.main:
            remove_checkpoints(self.out)


def remove_checkpoints(out: Path) -> None:
    (out / MANIFEST).unlink(missing_ok=True)
    for path in out.glob("checkpoint-epoch*.pt"):
        path.unlink(missing_ok=True)
    for path in out.glob(".checkpoint-epoch*.tmp"):
        path.unlink(missing_ok=True)
