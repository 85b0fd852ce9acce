"""What common/ knows of a run, built by each task from its typed config (nli/config.py,
ser/config.py): `RunSpec`, and the command-line flags and checks both trainers share. Light on
purpose (no torch): the study modules that run_all.sh asks for the experiment lists import it.
"""
import math
from dataclasses import dataclass
from pathlib import Path


def resolved(value):
    """Paths compared by where they point, however they are spelled."""
    if isinstance(value, Path) or (isinstance(value, str) and value and Path(value).exists()):
        return str(Path(value).resolve())
    return value


def args_record(values: dict) -> dict:
    """Command-line arguments as JSON values, paths resolved, as config.json keeps them."""
    return {k: resolved(v) for k, v in values.items()}


@dataclass(frozen=True)
class RunSpec:
    """What common/ knows of a run: its program, output folder, seed, the command line as
    config.json records it (`args`, paths resolved) and the arguments a --resume may change
    (`free`), and the run-level choices (device, precision, CUDA graphs, how often figures are
    read). Each task builds it from its typed config (nli/config.py, ser/config.py)."""
    program: str
    out: Path
    seed: int
    args: dict
    free: frozenset
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    amp: str = "auto"
    cuda_graphs: str = "auto"
    log_every: int = 50


def run_spec(program: str, config, free: frozenset) -> RunSpec:
    """The RunSpec of a task's typed config (nli/config.py, ser/config.py): its record() and its
    out, seed, resume, overwrite, device, amp, cuda_graphs and log_every."""
    return RunSpec(program=program, out=config.out, seed=config.seed, args=args_record(config.record()), free=free,
                   resume=config.resume, overwrite=config.overwrite, device=config.device, amp=config.amp,
                   cuda_graphs=config.cuda_graphs, log_every=config.log_every)


def add_run_flags(parser) -> None:
    """The flags of RunSpec that both trainers share: precision, device, CUDA graphs, how often
    figures are read, and what to do with a non-empty --out."""
    d = RunSpec("", Path("."), 0, {}, frozenset())
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default=d.amp, help="autocast precision")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    parser.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default=d.cuda_graphs,
                        help="replay each step from CUDA graphs (auto: on when the device is CUDA)")
    parser.add_argument("--log-every", type=int, default=d.log_every,
                        help="read loss, gradient norm and memory every N steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="empty a non-empty --out first")


def check_flags(parser, lr: float, seed: int, counts: dict) -> None:
    """The flags both trainers share: a finite, positive learning rate, a seed numpy accepts, and
    counts ({flag: value}) of at least 1. argparse's error: usage and one line, exit 2."""
    if not (math.isfinite(lr) and lr > 0):
        parser.error(f"--lr {lr}: give a positive, finite learning rate")
    if not 0 <= seed < 2**32:
        parser.error(f"--seed {seed}: give a whole number from 0 to {2**32 - 1}")
    check_counts(parser, counts)


def check_counts(parser, counts: dict) -> None:
    """Counts ({flag: value}, None when not given) of at least 1, else argparse's error."""
    for flag, value in counts.items():
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
