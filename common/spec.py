"""What common/ knows of a run (`RunSpec`, built by each task from its typed config), and the
command-line flags and checks both trainers share. No torch: the study modules' --list imports it."""
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path


def resolved(value):
    """Paths compared by where they point, however they are spelled."""
    if isinstance(value, Path) or (isinstance(value, str) and value and Path(value).exists()):
        return str(Path(value).resolve())
    return value


def args_record(values: dict) -> dict:
    """Command-line arguments as JSON values, paths resolved, as config.json keeps them."""
    return {k: resolved(v) for k, v in values.items()}


def recorded_arg(run: Path, name: str) -> int | None:
    """A whole-number argument a run recorded in its config.json (None when it cannot be read)."""
    try:
        return int(json.loads((Path(run) / "config.json").read_text(encoding="utf-8"))["args"][name])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class RunFlags:
    """The run-level flags every program shares: the one source of their defaults (add_run_flags)."""
    amp: str = "auto"  # autocast precision: auto (bf16 on CUDA where supported, else fp16; fp32 on a CPU)
    device: str = "auto"
    cuda_graphs: str = "auto"  # replay each step from CUDA graphs (auto: on when the device is CUDA)
    log_every: int = 50  # read loss, gradient norm and memory every N steps
    resume: bool = False  # continue the run in --out from its checkpoint
    overwrite: bool = False  # empty a non-empty --out first


@dataclass(frozen=True, kw_only=True)
class RunSpec(RunFlags):
    """What common/ knows of a run; `args`: as config.json records them; `free`: those a --resume may change."""
    program: str
    out: Path
    seed: int
    args: dict
    free: frozenset


# What a --resume may change (not nli.train's --trainer-logging-steps: a finished run keeps no per-step losses)
RESUME_FREE = frozenset({"resume", "overwrite", "device", "cuda_graphs", "log_every"})


def run_spec(program: str, config, free: frozenset = RESUME_FREE) -> RunSpec:
    """The RunSpec of a task's typed config: its record(), out, seed and run-level flags."""
    flags = {f.name: getattr(config, f.name) for f in fields(RunFlags)}
    return RunSpec(program=program, out=config.out, seed=config.seed, args=args_record(config.record()), free=free,
                   **flags)


def add_run_flags(parser, names=("amp", "device", "cuda_graphs", "log_every", "resume", "overwrite")) -> None:
    """The run-level flags a program takes (`names`, of RunFlags), with RunFlags' defaults."""
    d = RunFlags()
    flags = {"amp": dict(choices=["auto", "bf16", "fp16", "off"], default=d.amp, help="autocast precision"),
             "device": dict(choices=["auto", "cpu", "cuda"], default=d.device),
             "cuda_graphs": dict(choices=["auto", "on", "off"], default=d.cuda_graphs,
                                 help="replay each step from CUDA graphs (auto: on when the device is CUDA)"),
             "log_every": dict(type=int, default=d.log_every, help="read loss, gradient norm and memory every N steps"),
             "resume": dict(action="store_true", help="continue the run in --out from its checkpoint"),
             "overwrite": dict(action="store_true", help="empty a non-empty --out first")}
    for name in names:
        parser.add_argument("--" + name.replace("_", "-"), **flags[name])


def check_flags(parser, counts: dict, lr: float | None = None, seed: int | None = None) -> None:
    """A finite, positive --lr and a --seed numpy accepts (when given), and counts ({flag: value}, None when not
    given) of at least 1; else argparse's error (exit 2)."""
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        parser.error(f"--lr {lr}: give a positive, finite learning rate")
    if seed is not None and not 0 <= seed < 2**32:
        parser.error(f"--seed {seed}: give a whole number from 0 to {2**32 - 1}")
    for flag, value in counts.items():
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
