"""Every setting of an NLI run (python -m nli.train), in one typed block built once from the command line;
the defaults are the study's recipe (HF Trainer's). An `Experiment`: one ablation, its name and flags derived here."""
import argparse
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from common.spec import RunFlags, add_run_flags, check_flags


@dataclass(frozen=True)
class Experiment:
    """The study's ablations (nli.model.apply_experiment) and the hypothesis-only baseline."""
    freeze: int = 0
    keep_layers: int | None = None
    prune_heads: float | None = None
    prune_by: str = "random"
    hypothesis_only: bool = False

    @property
    def name(self) -> str:
        """The experiment's name: its folder under runs/nli/ and metrics.json's `experiment`."""
        by = "" if self.prune_by == "random" else f"-{self.prune_by}"
        parts = ["hypothesis-only" if self.hypothesis_only else "",
                 f"keep{self.keep_layers}" if self.keep_layers else "",
                 f"prune{self.prune_heads:g}{by}" if self.prune_heads else "",
                 f"freeze{self.freeze}" if self.freeze else ""]
        return "-".join(p for p in parts if p) or "all"

    @property
    def flags(self) -> str:
        """The nli.train flags that make it."""
        parts = [f"--freeze {self.freeze}" if self.freeze else "",
                 f"--keep-layers {self.keep_layers}" if self.keep_layers else "",
                 f"--prune-heads {self.prune_heads:g}" if self.prune_heads else "",
                 f"--prune-by {self.prune_by}" if self.prune_by != "random" else "",
                 "--hypothesis-only" if self.hypothesis_only else ""]
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class NLIConfig(RunFlags):
    model: str = "HooshvareLab/bert-base-parsbert-uncased"  # ParsBERT v1, the study's (nli/study.py); or a folder
    data_dir: Path = Path("data/farstail")  # Train-word.csv, Val-word.csv, Test-word.csv (downloaded if missing)
    out: Path = Path("runs/nli/all")
    epochs: int = 3
    batch_size: int = 16  # pairs per micro-batch
    lr: float = 3e-5  # peak learning rate, decaying linearly to 0, no warm-up
    max_length: int = 200  # word pieces per pair, special tokens included
    seed: int = 0  # data order, dropout, head choice, initialisation
    limit: int | None = None  # keep the first N rows of each split
    experiment: Experiment = field(default_factory=Experiment)
    importance_batches: int = 32  # training batches head importance is computed on
    trainer_logging_steps: int = 500  # the training loss is also reported as HF Trainer logs it, every N steps
    grad_accum: int = 1  # micro-batches per optimizer step
    batch_order: Path | None = None  # the training items of every optimizer step, one line each (replaces our order)

    def record(self) -> dict:
        """The command line as config.json records it: one key per flag, in the flags' order."""
        values = asdict(self)
        experiment = values.pop("experiment")
        keys = ["model", "data_dir", "out", "epochs", "batch_size", "lr", "max_length", "seed", "limit"]
        return {**{k: values.pop(k) for k in keys}, **experiment, **values}


def parse_args(argv=None) -> NLIConfig:
    d = NLIConfig()
    p = argparse.ArgumentParser(prog="python -m nli.train", description="Fine-tune ParsBERT on FarsTail.")
    p.add_argument("--model", default=d.model, help="hub id or save_pretrained folder")
    p.add_argument("--data-dir", type=Path, default=d.data_dir,
                   help="folder with Train-word.csv, Val-word.csv, Test-word.csv (downloaded if missing)")
    p.add_argument("--out", type=Path, default=d.out, help="output folder")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per micro-batch")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (linear decay to 0, no warm-up)")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help="word pieces per pair, special tokens included")
    p.add_argument("--seed", type=int, default=d.seed, help="fixes data order, dropout, head choice, initialisation")
    p.add_argument("--limit", type=int, help="keep the first N rows of each split (quick runs)")
    p.add_argument("--freeze", type=int, default=0, help="freeze the first N encoder layers")
    p.add_argument("--keep-layers", type=int, help="keep only the first N encoder layers")
    p.add_argument("--prune-heads", type=float, help="remove this fraction of all attention heads")
    p.add_argument("--prune-by", choices=["random", "importance", "masking"], default="random",
                   help="which heads --prune-heads removes: random (with the seed) or the least important; masking: "
                        "none, that fraction of each attention weight's entries masked at random with "
                        "torch.nn.utils.prune, as the study did")
    p.add_argument("--hypothesis-only", action="store_true",
                   help="leave the premise out: the hypothesis-only baseline (same recipe)")
    p.add_argument("--importance-batches", type=int, default=d.importance_batches,
                   help="training batches (of --batch-size) that head importance is computed on")
    p.add_argument("--trainer-logging-steps", type=int, default=d.trainer_logging_steps,
                   help="also report the training loss as HF Trainer logs it, the mean of each N steps (Trainer's "
                        "logging_steps: 500, as in the study)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    p.add_argument("--batch-order", type=Path,
                   help="train on exactly this batch order: a line per optimizer step of the run, its training items' "
                        "space-separated indices (after --limit), cut into --grad-accum micro-batches in order; as "
                        "benchmarks/trainer_recipe.py writes Trainer's (batch_order.txt)")
    add_run_flags(p)
    a = p.parse_args(argv)
    check_flags(p, {k: getattr(a, k) for k in ("epochs", "batch_size", "grad_accum", "max_length", "limit",
                                                "keep_layers", "log_every", "importance_batches",
                                                "trainer_logging_steps")}, a.lr, a.seed)
    if a.freeze < 0:
        p.error("--freeze must be 0 or more")
    if a.prune_heads is not None and not 0 < a.prune_heads < 1:  # (also refuses nan and 0)
        p.error(f"--prune-heads {a.prune_heads}: give a fraction of the heads between 0 and 1, like 0.5")
    if a.prune_by != "random" and not a.prune_heads:
        p.error(f"--prune-by {a.prune_by} goes with --prune-heads (the fraction); give --prune-heads too")
    values = vars(a)
    experiment = Experiment(**{f.name: values.pop(f.name) for f in fields(Experiment)})
    return NLIConfig(**values, experiment=experiment)
