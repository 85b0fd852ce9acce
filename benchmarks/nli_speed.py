"""Training throughput of `nli.train` (pairs/s) with the real ParsBERT-base shape.

    python -m benchmarks.nli_speed [--data-dir data/farstail] [--tokenizer HUB-ID-OR-FOLDER]
        [--model DIR] [--pairs 320] [--epochs 1] [--json FILE]
        [-- extra nli.train flags, e.g. --batch-size 8 --cuda-graphs off]

Random weights (speed does not depend on their values), saved once under .bench/ with the ParsBERT
v1 tokenizer; then `python -m nli.train` on the first --pairs FarsTail training pairs (about 60 word
pieces on average, p95 96, max 154), printing metrics.json's figures (docs/speed.md, "Benchmarks").
"""
import argparse
import csv
import json
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def parsbert_shaped(tokenizer: str | Path) -> Path:
    """A randomly initialised ParsBERT-base (12 layers, 768 wide, vocab 100000) folder."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    folder = ROOT / ".bench" / "parsbert-base-random"
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        BertForSequenceClassification(BertConfig(vocab_size=100000, num_labels=3)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return folder


def parse(p: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, list[str]]:
    """Both benchmarks' flags: p's with --model and --json, and the trainer's flags (those after --)."""
    p.add_argument("--model", type=Path, help="a model folder to time instead (a tiny one, for a dry run)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a, extra = p.parse_known_args(argv)
    return a, [x for x in extra if x != "--"]  # `-- --batch-size 8`: what follows -- goes to the trainer


def timed(train, flags: list[str], work: Path, a, extra: list[str]) -> tuple[dict, dict, list[dict], dict]:
    """Run `train` (a trainer's main) in work: (speed, config.json, history.csv rows, both benchmarks' figures)."""
    train([*flags, "--out", str(work / "run"), "--epochs", str(a.epochs), *extra])
    speed = json.loads((work / "run" / "metrics.json").read_text())["speed"]
    cfg = json.loads((work / "run" / "config.json").read_text())
    epochs = list(csv.DictReader(open(work / "run" / "history.csv")))
    return speed, cfg, epochs, {
        "train_seconds": speed["train_seconds"], "warmup_seconds": speed["warmup_seconds"],
        "cuda_graphs": speed["cuda_graphs"], "graph_shapes": speed["graph_shapes"],
        "capture_seconds": speed["capture_seconds"], "eval_seconds": speed["eval_seconds"], "epochs": a.epochs,
        "per_epoch_train_loss": [float(r["train_loss"]) for r in epochs], "device": cfg["run_info"]["device"],
        "precision": cfg["derived"]["precision"], "batch": cfg["derived"]["optimizer_batch"],
        "torch": torch.__version__, "extra_flags": extra}


def report(result: dict, path: Path | None) -> None:
    print(json.dumps(result))
    if path:
        path.write_text(json.dumps(result, indent=2))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.nli_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("data/farstail"), help="as nli.train's")
    p.add_argument("--tokenizer", default="HooshvareLab/bert-base-parsbert-uncased", help="ParsBERT v1's (or a folder)")
    p.add_argument("--pairs", type=int, default=320, help="training pairs timed (the first N of the training split)")
    p.add_argument("--epochs", type=int, default=1, help="epochs over them")
    a, extra = parse(p, argv)
    from nli.train import main as train
    model = a.model or parsbert_shaped(a.tokenizer)
    with tempfile.TemporaryDirectory(prefix="nli-bench-", ignore_cleanup_errors=True) as work:
        speed, cfg, epochs, result = timed(train, ["--model", str(model), "--data-dir", str(a.data_dir), "--limit",
                                                   str(a.pairs)], Path(work), a, extra)
    report({"pairs_per_s": speed["items_per_s"], "pairs_per_s_steady": speed["items_per_s_steady"], **result,
            "pairs": a.pairs, "warmup_pairs": speed["warmup_items"],
            "eval_pairs": cfg["derived"]["pairs"]["val"] + cfg["derived"]["pairs"]["test"],
            "per_epoch_pairs_per_s": [float(r["items_per_s"]) for r in epochs]}, a.json)


if __name__ == "__main__":
    main()
