"""Every setting of a SER run (python -m ser.train), in one typed block built once from the command line;
the defaults are the study's recipe. The protocol flags make one object, ser/splits.py's `Protocol`."""
import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.spec import RunFlags, add_run_flags, check_flags
from ser.splits import Protocol


@dataclass(frozen=True)
class SERConfig(RunFlags):
    model: str = "facebook/hubert-base-ls960"  # hub id or save_pretrained folder
    feature_extractor: str | None = None  # default: the model's own, else the study's settings
    data_dir: Path | None = None  # ShEMO (*.wav named like F01A01.wav, any sub-folders)
    manifest: Path | None = None  # or a CSV path,label[,speaker]
    out: Path = Path("runs/ser/leak-free-random/seed0")
    epochs: int = 5
    batch_size: int = 2  # clips per micro-batch
    lr: float = 5e-6  # constant
    seed: int = 0  # split, augmentation, batch order, initialisation, LayerDrop and SpecAugment draws
    limit: int | None = None  # a stratified sample of N clips of each split
    protocol: Protocol = field(default_factory=Protocol)
    augment_method: str = "librosa"  # audiomentations' backend for pitch shift and time stretch
    cache_dir: Path | None = None  # augmented clips (default: OUT/cache)
    strict: bool = False  # an unreadable, empty or silent file is an error
    freeze_feature_encoder: bool = False
    grad_accum: int = 1  # micro-batches per optimizer step

    def record(self) -> dict:
        """The command line as config.json records it: one key per flag, in the flags' order."""
        values = asdict(self)
        protocol = values.pop("protocol")
        keys = ["model", "feature_extractor", "data_dir", "manifest", "out", "epochs", "batch_size", "lr", "seed",
                "limit"]
        return {**{k: values.pop(k) for k in keys}, "protocol": protocol["kind"], "split": protocol["split"],
                "no_balance": not protocol["balance"], "split_seed": protocol["split_seed"], "folds": protocol["folds"],
                **({"fold": protocol["fold"]} if protocol["fold"] else {}), **values}


def parse_args(argv=None) -> SERConfig:
    d = SERConfig()
    p = argparse.ArgumentParser(prog="python -m ser.train", description="Fine-tune HuBERT for speech emotions.")
    p.add_argument("--model", default=d.model, help="hub id or save_pretrained folder")
    p.add_argument("--feature-extractor", help="hub id or folder of the feature extractor (default: the model's, "
                   "else the study's: 16 kHz, per-clip normalisation, no attention mask)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", type=Path, help="ShEMO folder (*.wav named like F01A01.wav, any sub-folders)")
    src.add_argument("--manifest", type=Path, help="CSV path,label[,speaker]; paths relative to the CSV")
    p.add_argument("--out", type=Path, default=d.out, help="output folder")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the (balanced) training split")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per micro-batch")
    p.add_argument("--lr", type=float, default=d.lr, help="constant learning rate")
    p.add_argument("--seed", type=int, default=d.seed, help="fixes split, augmentation, batch order, initialisation")
    p.add_argument("--limit", type=int, help="keep a stratified sample of N clips of each split (quick runs)")
    p.add_argument("--protocol", choices=["leak-free", "study"], default="leak-free",
                   help="leak-free: split, then balance the training split; study: balance the whole corpus, "
                        "then split at random (as the study did)")
    p.add_argument("--split", choices=["random", "speaker"], default="random",
                   help="leak-free protocol: random (stratified 80/10/10) or speaker (no speaker in two splits)")
    p.add_argument("--no-balance", action="store_true", help="leak-free protocol: do not augment the training split")
    p.add_argument("--split-seed", type=int, help="the seed of the split (default: the study's random_state 10 under "
                   "--protocol study, --seed under leak-free); training is seeded by --seed either way")
    p.add_argument("--folds", type=int, help="with --split speaker: K speaker-independent folds, each tested once "
                   "(K runs in OUT/fold1 ... OUT/foldK, and their summary in OUT)")
    p.add_argument("--augment-method", choices=["librosa", "signalsmith"], default=d.augment_method,
                   help="audiomentations backend for pitch shift and time stretch (librosa: phase vocoder)")
    p.add_argument("--cache-dir", type=Path, help="augmented clips cache (default: OUT/cache)")
    p.add_argument("--strict", action="store_true", help="an unreadable, empty or silent file is an error")
    p.add_argument("--freeze-feature-encoder", action="store_true", help="freeze HuBERT's convolutional front end")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    add_run_flags(p)
    a = p.parse_args(argv)
    if a.data_dir is None and a.manifest is None:
        p.error("give --data-dir (ShEMO) or --manifest CSV")
    if a.protocol == "study" and (a.split != "random" or a.no_balance):
        p.error("--protocol study balances the whole corpus and splits it at random; --split speaker and "
                "--no-balance belong to --protocol leak-free")
    check_flags(p, {k: getattr(a, k) for k in ("epochs", "batch_size", "grad_accum", "limit", "log_every")}, a.lr,
                a.seed)
    if a.split_seed is not None and not 0 <= a.split_seed < 2**32:
        p.error(f"--split-seed {a.split_seed}: give a whole number from 0 to {2**32 - 1}")
    if a.folds is not None and (a.folds < 3 or a.protocol != "leak-free" or a.split != "speaker"):
        p.error("--folds K needs K of at least 3 (one fold tests, the next validates, the rest train) and "
                "--protocol leak-free --split speaker")
    protocol = Protocol(a.protocol, a.split, not a.no_balance, a.split_seed, a.folds)
    flat = {k: v for k, v in vars(a).items() if k not in ("protocol", "split", "no_balance", "split_seed", "folds")}
    return SERConfig(**flat, protocol=protocol)
