"""What makes a run safe to interrupt: verified checkpoints, the arguments and inputs a run
was made with, and the rule that says a run is finished. (The lock and the output-folder rules
are in common/outdir.py.)

- Checkpoint: after each finished epoch but the last (the model is saved then anyway) the whole
  training state is copied to host memory (pinned buffers on CUDA, reused from one checkpoint to
  the next) and written by a background thread while the next epoch trains: to
  `checkpoint-epoch<N>.pt` (temporary file, fsync, rename), its SHA-256 and size to a sidecar
  `checkpoint-epoch<N>.pt.sha256`, and both to `checkpoint.json`, which keeps the newest two.
  A write is finished (joined) before the next one starts, before the loop ends, and when the
  loop is left by an error or Ctrl-C; a process killed mid-write leaves the previous checkpoint
  valid (nothing is recorded until its file is complete). Under torchrun only rank 0 writes.
  `--resume` verifies a file's size and checksum before loading it (with `weights_only=True`); a
  damaged newest checkpoint falls back to the one before, and says so; a damaged
  `checkpoint.json` falls back to the sidecars. If none is usable the run stops with one line
  saying what to do. A checkpoint also holds the fingerprint of the inputs it was trained on
  (common/inputs.py): a resume whose data changed is refused, naming the file.
- Finished: a run is finished when `metrics.json` exists, the file written last, after the model,
  reports and plots; the checkpoints are removed after it (a leftover one is cleaned up by the
  next `--resume`). A finished run is skipped only when its arguments and inputs are the same.
"""
import hashlib
import json
import os
import threading
from pathlib import Path

import torch

from common.distributed import Dist, gather
from common.errors import RunFailed, UserError
from common.files import fsync_folder, read_text, sha256, write_error, write_json
from common.inputs import refuse_changed
from common.outdir import CHECKPOINT, checkpoint_file
from common.spec import resolved
from common.rng import rng_state, set_rng_state

MANIFEST = "checkpoint.json"
FINISHED = "metrics.json"  # written last: its presence means every result file is in place
CHANGED = ("start the run over with --overwrite (it deletes this folder's partial run), or give another --out")


# ---------------------------------------------------------------- arguments of a run
def check_same_args(old: dict, new: dict, free: set, where: str) -> None:
    """Refuse to continue a run in `where` whose recorded arguments differ from `new` (except `free`)."""
    changed = [k for k in new if k not in free and resolved(old.get(k)) != new[k]]
    if changed:
        what = ", ".join(f"--{k.replace('_', '-')} {old.get(k)!r} there, {new[k]!r} now" for k in changed)
        raise UserError(f"{where} holds a run with other arguments ({what}); resume it with the same arguments, "
                        "or give another --out (--overwrite would delete it)")


def recorded_config(out: Path) -> dict | None:
    """config.json of the run in out (None when it has none)."""
    path = out / "config.json"
    if not path.exists():
        return None
    try:
        config = json.loads(read_text(path))
        assert isinstance(config["args"], dict)
        return config
    except (ValueError, KeyError, TypeError, AssertionError):
        raise UserError(f"{path} is not readable; give another --out, or --overwrite to replace this run") from None


def finished_run(out: Path, args: dict, free: set, inputs=None) -> bool:
    """True when out holds a finished run (metrics.json) of the same arguments (config.json) and,
    when `inputs()` (the current fingerprint) is given, of the same inputs."""
    if not (out / FINISHED).exists():
        return False
    old = recorded_config(out)
    if old is None:
        raise UserError(f"{out} has {FINISHED} but no config.json; give another --out, or --overwrite")
    check_same_args(old["args"], args, free, str(out))
    if inputs is not None:
        refuse_changed(old.get("inputs"), inputs(), f"the finished run in {out}",
                       "Its results belong to the old inputs: run it again with --overwrite, or give another --out")
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
        fsync_folder(path.parent)
    except (OSError, RuntimeError) as e:  # torch reports a failed write (a full disk too) as RuntimeError
        tmp.unlink(missing_ok=True)
        raise RunFailed(f"cannot write {path}: {write_error(e)}") from None
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


class HostCopy:
    """Copies of a state's tensors in host memory, in buffers kept from one checkpoint to the next
    (pinned for CUDA tensors, so that the copy runs at full speed and a background thread can
    write them while training changes the originals)."""

    def __init__(self):
        self.buffers: list[torch.Tensor] = []

    def __call__(self, state):
        self.n = 0
        copy = self._copy(state)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the copies are complete before training goes on
        return copy

    def _copy(self, obj):
        if torch.is_tensor(obj):
            if self.n == len(self.buffers):
                self.buffers.append(torch.empty(0))
            buf = self.buffers[self.n]
            if buf.shape != obj.shape or buf.dtype != obj.dtype:
                buf = self.buffers[self.n] = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=obj.is_cuda)
            self.n += 1
            return buf.copy_(obj.detach(), non_blocking=obj.is_cuda)
        if isinstance(obj, dict):
            return {k: self._copy(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v) for v in obj)
        return obj


class Checkpoint:
    """The run's checkpoints in OUT: the state of every part given (model, optimizer, scaler:
    anything with state_dict/load_state_dict), every RNG (of every process under torchrun), the
    per-epoch results so far, and the fingerprint of the inputs. Saved after each finished epoch
    by rank 0; the newest two are kept. Every process restores from the same verified file.
    `spec`: the run's RunSpec (common/spec.py: out, resume, arguments, those a resume may change)."""

    def __init__(self, spec, d: Dist | None = None, inputs: dict | None = None, **parts):
        self.out, self.spec, self.parts = spec.out, spec, parts
        self.d = d or Dist()
        self.inputs = inputs or {}
        self.host = HostCopy()
        self.writer: threading.Thread | None = None
        self.failed: BaseException | None = None

    def _manifest(self) -> list[dict]:
        """checkpoint.json's entries, newest first ([] when there is none). Raises ValueError when damaged."""
        path = self.out / MANIFEST
        if not path.exists():
            return []
        try:
            entries = json.loads(read_text(path))["checkpoints"]
            assert all({"file", "epoch", "bytes", "sha256"} <= set(e) for e in entries)
            return entries
        except (ValueError, KeyError, TypeError, AssertionError, UserError):
            raise ValueError(f"{MANIFEST} is damaged") from None

    def _sidecars(self) -> list[dict]:
        """The entries the checkpoint files' own .sha256 files give, newest first."""
        entries = []
        for path in self.out.glob("checkpoint-epoch*.pt.sha256"):
            if not CHECKPOINT.fullmatch(path.name):  # (a user's checkpoint-epoch-best.pt.sha256 is not ours)
                continue
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                assert {"file", "epoch", "bytes", "sha256"} <= set(entry) and path.name == entry["file"] + ".sha256"
                entries.append(entry)
            except (OSError, ValueError, TypeError, AssertionError):
                continue
        return sorted(entries, key=lambda e: -e["epoch"])

    def _entries(self, log) -> list[dict]:
        try:
            entries = self._manifest()
        except ValueError:
            entries = self._sidecars()
            log(f"warning: {self.out / MANIFEST} is damaged; checking each checkpoint against its own .sha256 file "
                f"instead ({len(entries)} found)")
            return entries
        return entries or self._sidecars()  # a run stopped after a checkpoint but before its manifest

    def restore(self, log) -> tuple[int, list, list]:
        """(first epoch to run, history, evals): from the newest good checkpoint with
        --resume, else a fresh start."""
        if not self.spec.resume:
            return 1, [], []
        entries = self._entries(log)
        recorded = {e["file"] for e in entries}
        for path in sorted(self.out.glob("checkpoint-epoch*.pt")):
            if CHECKPOINT.fullmatch(path.name) and path.name not in recorded:  # written, but the run stopped before recording it: never trusted
                log(f"warning: {path.name} has no recorded checksum (the run stopped while saving it); not used")
        if not entries:
            return 1, [], []
        damaged = []
        for entry in entries:
            state, why = load_verified(self.out, entry)
            if state is None:
                damaged.append(f"{entry['file']} ({why})")
                continue
            check_same_args(state["args"], self.spec.args, self.spec.free, f"the checkpoint in {self.out}")
            refuse_changed(state.get("inputs"), self.inputs, f"the checkpoint in {self.out}", CHANGED)
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
        """Start writing this epoch's checkpoint (see the module docstring): the state is copied
        to host memory now, and a background thread writes it, its .sha256 file and
        checkpoint.json (all durable), then drops all but the newest two."""
        rngs = gather(rng_state())  # every process takes part; rank 0 writes
        if not self.d.main:
            return
        self.wait()  # one write at a time (and the host buffers are free again)
        state = {"epoch": epoch, "args": self.spec.args, "world": self.d.world, "inputs": self.inputs,
                 "rng": rngs if self.d.active else rngs[0], "history": list(history), "evals": list(evals),
                 **self.host({name: part.state_dict() for name, part in self.parts.items()})}
        self.writer = threading.Thread(target=self._write, args=(epoch, state), name=f"checkpoint-epoch{epoch}")
        self.writer.start()

    def _write(self, epoch: int, state: dict) -> None:
        try:
            entry = {"epoch": epoch, **save_verified(self.out / f"checkpoint-epoch{epoch}.pt", state)}
            write_json(self.out / f"{entry['file']}.sha256", entry)
            try:
                earlier = self._manifest()
            except ValueError:
                earlier = self._sidecars()
            keep = [entry] + [e for e in earlier if e["file"] != entry["file"]][:1]
            write_json(self.out / MANIFEST, {"checkpoints": keep})
            names = {e["file"] for e in keep}
            for path in self.out.iterdir():
                if CHECKPOINT.fullmatch(path.name) and path.name.removesuffix(".sha256") not in names:
                    path.unlink(missing_ok=True)
        except BaseException as e:  # raised in the training thread by wait()
            self.failed = e

    def wait(self, quiet: bool = False) -> None:
        """Block until the checkpoint being written is on disk, then raise the error its write
        met (unless `quiet`: the loop is being left for another error already)."""
        if self.writer is not None:
            self.writer.join()
            self.writer = None
        failed, self.failed = self.failed, None
        if failed is not None and not quiet:
            raise failed

    def remove(self) -> None:
        self.wait()
        if self.d.main:
            remove_checkpoints(self.out)


def remove_checkpoints(out: Path) -> None:
    (out / MANIFEST).unlink(missing_ok=True)
    for path in out.iterdir():  # by name, never a pattern: checkpoint-epoch-best.pt is not ours
        if checkpoint_file(path.name):
            path.unlink(missing_ok=True)
