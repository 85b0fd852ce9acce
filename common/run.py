"""Run helpers shared by both training loops: user errors, seeding and RNG state, device and
precision choice, the output folder, the run log, atomic checkpoints and run provenance."""
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, bad label): printed as one line, exit 2."""


@contextlib.contextmanager
def user_errors():
    """Turn a UserError into one line on stderr and exit status 2, with no traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


# ---------------------------------------------------------------- seeding and RNG state
def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA): data order, augmentation, dropout, init."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a training step draws from, so a resumed run continues the same streams."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- device and precision
def choose_device(name: str) -> torch.device:
    """`auto` takes CUDA when present; asking for `cuda` without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA device is available")
    return torch.device(name)


def choose_precision(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32.
    `auto`: bf16 on a CUDA device that supports it, fp16 (with a GradScaler) on older CUDA
    devices, fp32 on the CPU (CPU autocast is slower than fp32 for these models)."""
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype`, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a batch of CPU tensors to device; on CUDA through pinned memory, without blocking the
    host, so the next batch is assembled while this one is copied."""
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in batch.items()}


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


# ---------------------------------------------------------------- output folder and log
def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a non-empty --out unless --resume (keep it) or --overwrite (empty it) is given.
    --overwrite deletes only what looks like an earlier run (train.log or config.json inside)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if overwrite:
            if not ((out / "train.log").exists() or (out / "config.json").exists()):
                raise UserError(f"--overwrite: {out} does not look like a run folder (no train.log or config.json); "
                                "refusing to delete it")
            import shutil
            shutil.rmtree(out)
        elif not resume:
            raise UserError(f"--out {out} is not empty; pass --resume to continue it or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)


class RunLog:
    """Prints a line and appends it to train.log (tqdm bars go to the terminal only)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# ---------------------------------------------------------------- arguments of a run
def args_record(args) -> dict:
    """The command-line arguments as JSON values (paths as strings), as config.json keeps them."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def check_same_args(old: dict, args, free: set, where: str) -> None:
    """Refuse to continue a run in `where` whose recorded arguments differ from these (except `free`)."""
    new = args_record(args)
    changed = [k for k in new if k not in free and old.get(k) != new[k]]
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise UserError(f"{where} holds a run with other arguments ({flags}); use the same ones, or --overwrite")


def finished_run(out: Path, args, free: set) -> bool:
    """True when out holds a finished run (metrics.json) of the same arguments (config.json)."""
    if not (out / "metrics.json").exists():
        return False
    try:
        old = json.loads((out / "config.json").read_text(encoding="utf-8"))["args"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{out} has metrics.json but no readable config.json; use --overwrite") from None
    check_same_args(old, args, free, str(out))
    return True


# ---------------------------------------------------------------- files
def write_json(path: Path, obj) -> None:
    """Write JSON atomically: a temporary file beside it, then a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save into a temporary file, fsync, then rename over the old checkpoint: a process
    killed at any moment leaves either the previous checkpoint or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class Checkpoint:
    """A run's one rolling checkpoint (OUT/checkpoint.pt): the state of every part given (model,
    optimizer, scheduler, scaler: anything with state_dict/load_state_dict), the torch, numpy and
    Python RNG states, and the per-epoch results so far. Saved after each finished epoch, so a
    resumed run continues exactly where an uninterrupted one would be; removed when the run ends."""

    def __init__(self, args, free: set, **parts):
        self.path = args.out / "checkpoint.pt"
        self.args, self.free, self.parts = args, free, parts

    def restore(self, log) -> tuple[int, list, list]:
        """(first epoch to run, history, evals): from the checkpoint with --resume, else a fresh start."""
        state = load_checkpoint(self.path) if self.args.resume else None
        if state is None:
            return 1, [], []
        check_same_args(state["args"], self.args, self.free, f"the checkpoint in {self.args.out}")
        for name, part in self.parts.items():
            part.load_state_dict(state[name])
        set_rng_state(state["rng"])
        log(f"resuming after epoch {state['epoch']}")
        return state["epoch"] + 1, state["history"], state["evals"]

    def save(self, epoch: int, history: list, evals: list) -> None:
        save_checkpoint(self.path, {"epoch": epoch, "args": args_record(self.args), "rng": rng_state(),
                                    "history": history, "evals": evals,
                                    **{name: part.state_dict() for name, part in self.parts.items()}})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def start_run(args, free: set):
    """The opening every run shares: prepare --out, open train.log, choose device and precision,
    seed everything. Returns (log, device, autocast dtype), or None when --resume finds this
    run already finished."""
    prepare_out_dir(args.out, args.resume, args.overwrite)
    log = RunLog(args.out / "train.log")
    if args.resume and finished_run(args.out, args, free):
        log(f"{args.out} already holds this finished run; nothing to do")
        return None
    device = choose_device(args.device)
    dtype = choose_precision(args.amp, device)
    seed_everything(args.seed)
    return log, device, dtype


def run_info(device: torch.device) -> dict:
    """Versions, git commit and hardware, written beside every result."""
    import transformers
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    for name in ("sklearn", "torchaudio", "audiomentations", "soundfile"):
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
