"""Training throughput of `nli.train` (pairs/s) with the real ParsBERT-base shape.

    python -m benchmarks.nli_speed [--data-dir ../shared/data/farstail]
        [--tokenizer ../shared/data/parsbert-v1] [--pairs 320] [-- extra nli.train flags]

Builds BertConfig(vocab_size=100000) with random weights (no hub here; speed does not depend on
the values), saves it once under .bench/ with the ParsBERT v1 tokenizer, then runs the real
command line, `python -m nli.train`, on the first --pairs training pairs of FarsTail for one
epoch and prints the loop's own figure from history.csv (training time only, evaluation
excluded). Real FarsTail pairs average about 60 word pieces (p95 96, max 154).
"""
import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def parsbert_shaped(tokenizer_dir: Path) -> Path:
    """A randomly initialised ParsBERT-base (12 layers, 768 wide, vocab 100000) folder."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    folder = ROOT / ".bench" / "parsbert-base-random"
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        BertForSequenceClassification(BertConfig(vocab_size=100000, num_labels=3)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.nli_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "farstail")
    p.add_argument("--tokenizer", type=Path, default=ROOT.parent / "shared" / "data" / "parsbert-v1")
    p.add_argument("--pairs", type=int, default=320, help="training pairs timed (one epoch over them)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a, extra = p.parse_known_args(argv)
    from nli.train import main as train
    model = parsbert_shaped(a.tokenizer)
    out = Path(tempfile.mkdtemp(prefix="nli-bench-"))
    try:
        train(["--model", str(model), "--data-dir", str(a.data_dir), "--out", str(out), "--epochs", "1",
               "--limit", str(a.pairs), "--overwrite", *extra])
        row = next(csv.DictReader(open(out / "history.csv")))
        cfg = json.loads((out / "config.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result = {"pairs_per_s": round(float(row["items_per_s"]), 1), "seconds": round(float(row["seconds"]), 2),
              "pairs": a.pairs, "device": cfg["run_info"]["device"], "precision": cfg["derived"]["precision"],
              "batch": cfg["derived"]["optimizer_batch"], "torch": torch.__version__, "extra_flags": extra}
    print(json.dumps(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
