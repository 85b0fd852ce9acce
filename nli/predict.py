"""Predict entailment / contradiction / neutral with a model trained by `nli.train`.

    python -m nli.predict --model runs/nli/all/seed0/model "PREMISE" "HYPOTHESIS"
    python -m nli.predict --model DIR --tsv pairs.tsv [--output predictions.tsv]

The TSV needs `premise` and `hypothesis` columns (CSV quoting, as FarsTail's files); the output
repeats them with the predicted label and one probability column per label. Shortened and
pruned models load through the same path (nli.model.load_classifier).
"""
import argparse
import csv
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from common.run import UserError, user_errors
from nli.model import load_classifier

BATCH = 64


def load(model_dir: str):
    if not Path(model_dir, "config.json").exists():
        raise UserError(f"--model {model_dir}: no config.json there; give the model/ folder of a finished run")
    return load_classifier(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


@torch.inference_mode()
def probabilities(model, tokenizer, premises, hypotheses, max_length: int = 200) -> torch.Tensor:
    """Softmax probabilities, one row per pair (batches padded to their own longest pair)."""
    out = []
    for i in range(0, len(premises), BATCH):
        enc = tokenizer(premises[i:i + BATCH], hypotheses[i:i + BATCH], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        out.append(model(**enc).logits.float().softmax(-1))
    return torch.cat(out)


def read_pairs(path: Path) -> tuple[list[str], list[str]]:
    if not path.exists():
        raise UserError(f"--tsv {path}: no such file")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"premise", "hypothesis"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    for n, r in enumerate(rows, 2):
        if not (r["premise"] or "").strip() or not (r["hypothesis"] or "").strip():
            raise UserError(f"{path}, line {n}: empty premise or hypothesis")
    return [r["premise"] for r in rows], [r["hypothesis"] for r in rows]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nli.predict", description="Classify premise/hypothesis pairs.")
    p.add_argument("--model", required=True, help="model/ folder written by nli.train")
    p.add_argument("pair", nargs="*", metavar="PREMISE HYPOTHESIS", help="one pair to classify")
    p.add_argument("--tsv", type=Path, help="file of pairs (premise, hypothesis columns)")
    p.add_argument("--output", type=Path, help="where --tsv predictions go (default: standard output)")
    p.add_argument("--max-length", type=int, default=200)
    a = p.parse_args(argv)
    if bool(a.tsv) == bool(a.pair) or (a.pair and len(a.pair) != 2):
        p.error("give either PREMISE HYPOTHESIS or --tsv FILE")
    hf_logging.disable_progress_bar()
    with user_errors():
        model, tokenizer = load(a.model)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if a.pair:
            probs = probabilities(model, tokenizer, [a.pair[0]], [a.pair[1]], a.max_length)[0]
            print(names[int(probs.argmax())])
            for n, q in zip(names, probs.tolist()):
                print(f"  {n:<14} {q:.4f}")
            return
        premises, hypotheses = read_pairs(a.tsv)
        probs = probabilities(model, tokenizer, premises, hypotheses, a.max_length)
        f = open(a.output, "w", encoding="utf-8", newline="") if a.output else sys.stdout
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["premise", "hypothesis", "label"] + [f"p_{n}" for n in names])
        for prem, hyp, q in zip(premises, hypotheses, probs.tolist()):
            w.writerow([prem, hyp, names[max(range(len(q)), key=q.__getitem__)]] + [f"{x:.4f}" for x in q])
        if a.output:
            f.close()


if __name__ == "__main__":
    main()
