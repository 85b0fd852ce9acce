"""What makes a run safe to interrupt (docs/reliability.md): verified checkpoints, written by rank 0 in
the background (recorded in .sha256 and checkpoint.json only once complete), the arguments and
inputs a run was made with, and the rule that metrics.json, written last, marks a run finished."""
import hashlib
import json
import threading
from pathlib import Path

import torch

from common.distributed import Dist, gather
from common.errors import UserError
from common.files import atomic_write, read_text, sha256, write_json
from common.inputs import refuse_changed
from common.outdir import CHECKPOINT, checkpoint_file
from common.spec import resolved
from common.rng import rng_state, set_rng_state

MANIFEST = "checkpoint.json"
FINISHED = "metrics.json"  # written last: its presence means every result file is in place
CHANGED = ("start the run over with --overwrite (it deletes this folder's partial run), or give another --out")


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


class _HashingFile:
    """A writable file that also feeds every byte to SHA-256 (so the file is hashed once, as written)."""

    def __init__(self, f, sha):
        self.f, self.sha = f, sha

    def write(self, data):
        self.sha.update(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def save_verified(path: Path, state: dict) -> dict:
    """torch.save through atomic_write, hashed as it is written; returns {file, bytes, sha256}."""
    sha = hashlib.sha256()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, _HashingFile(f, sha))
    atomic_write(path, write)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha.hexdigest()}


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
    """Copies of a state's tensors in host buffers kept from one checkpoint to the next (pinned for CUDA)."""

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
    """The run's checkpoints: the parts given (with state_dict), RNGs, results so far, inputs' fingerprint."""

    def __init__(self, spec, d: Dist, fingerprint: dict, **parts):
        self.out, self.spec, self.parts, self.d, self.fingerprint = spec.out, spec, parts, d, fingerprint
        self.host, self.writer, self.failed = HostCopy(), None, None  # (the writing thread, and its error)

    def _manifest(self) -> list[dict]:
        """checkpoint.json's entries, newest first ([] when there is none); ValueError when damaged."""
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
        for path in [p for p in self.out.glob("*.pt.sha256") if CHECKPOINT.fullmatch(p.name)]:  # not a user's
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                assert {"file", "epoch", "bytes", "sha256"} <= set(entry) and path.name == entry["file"] + ".sha256"
                entries.append(entry)
            except (OSError, ValueError, TypeError, AssertionError):
                continue
        return sorted(entries, key=lambda e: -e["epoch"])

    def _entries(self, log=None) -> list[dict]:
        try:
            return self._manifest() or self._sidecars()  # (a run stopped after a checkpoint, before its manifest)
        except ValueError:
            entries = self._sidecars()
            if log:
                log(f"warning: {self.out / MANIFEST} is damaged; checking each checkpoint against its own .sha256 "
                    f"file instead ({len(entries)} found)")
            return entries

    def restore(self, log) -> tuple[int, list, list]:
        """(first epoch to run, history, evals): from the newest good checkpoint with --resume, else a fresh start."""
        if not self.spec.resume:
            return 1, [], []
        entries = self._entries(log)
        recorded = {e["file"] for e in entries}
        for path in sorted(self.out.glob("checkpoint-epoch*.pt")):  # written, but never recorded: never trusted
            if CHECKPOINT.fullmatch(path.name) and path.name not in recorded:
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
            refuse_changed(state.get("inputs"), self.fingerprint, f"the checkpoint in {self.out}", CHANGED)
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
        """Copy the state to host memory and start writing it in a background thread."""
        rngs = gather(rng_state())  # every process takes part; rank 0 writes
        if not self.d.main:
            return
        self.wait()  # one write at a time (and the host buffers are free again)
        state = {"epoch": epoch, "args": self.spec.args, "world": self.d.world, "inputs": self.fingerprint,
                 "rng": rngs if self.d.active else rngs[0], "history": list(history), "evals": list(evals),
                 **self.host({name: part.state_dict() for name, part in self.parts.items()})}
        self.writer = threading.Thread(target=self._write, args=(epoch, state), name=f"checkpoint-epoch{epoch}")
        self.writer.start()

    def _write(self, epoch: int, state: dict) -> None:
        try:
            entry = {"epoch": epoch, **save_verified(self.out / f"checkpoint-epoch{epoch}.pt", state)}
            write_json(self.out / f"{entry['file']}.sha256", entry)
            keep = [entry] + [e for e in self._entries() if e["file"] != entry["file"]][:1]
            write_json(self.out / MANIFEST, {"checkpoints": keep})
            names = {e["file"] for e in keep}
            for path in self.out.iterdir():
                if CHECKPOINT.fullmatch(path.name) and path.name.removesuffix(".sha256") not in names:
                    path.unlink(missing_ok=True)
        except BaseException as e:  # raised in the training thread by wait()
            self.failed = e

    def wait(self, quiet: bool = False) -> None:
        """Block until the checkpoint is on disk, then raise its write's error (unless `quiet`)."""
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
