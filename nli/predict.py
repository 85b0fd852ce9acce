"""Predict entailment / contradiction / neutral with a model trained by `nli.train` (docs/nli.md).

    python -m nli.predict --model runs/nli/all/seed0/model "PREMISE" "HYPOTHESIS"
    python -m nli.predict --model DIR --tsv pairs.tsv [--output predictions.tsv]

The TSV's columns and the output's, and what --model accepts: docs/nli.md, "Predict".
"""
import argparse
import csv
import io
import sys
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from common.errors import UserError, user_errors
from common.files import read_table, write_text
from common.outdir import model_of_run
from nli.data import check_max_length, load_tokenizer
from nli.model import load_classifier

BATCH = 64


def load(model_dir: str):
    """(model in eval mode, tokenizer) from a model/ folder written by nli.train, or its run folder."""
    folder = str(model_of_run(model_dir, "nli.train"))
    return load_classifier(folder).eval(), load_tokenizer(folder)


@torch.inference_mode()
def probabilities(model, tokenizer, premises, hypotheses, max_length: int = 200) -> torch.Tensor:
    """Softmax probabilities, one row per pair; a hypothesis-only model gets the hypotheses alone."""
    out = []
    alone = getattr(model.config, "hypothesis_only", False)
    for i in range(0, len(premises), BATCH):
        texts = (hypotheses[i:i + BATCH],) if alone else (premises[i:i + BATCH], hypotheses[i:i + BATCH])
        enc = tokenizer(*texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        out.append(model(**enc).logits.float().softmax(-1))
    return torch.cat(out)


def read_pairs(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise UserError(f"--tsv {path}: no such file")
    cols, rows = read_table(path, delimiter="\t")
    missing = {"premise", "hypothesis"} - set(cols)
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    for line, r in rows:
        if not (r["premise"] or "").strip() or not (r["hypothesis"] or "").strip():
            raise UserError(f"{path}, line {line}: empty premise or hypothesis")
    if not rows:
        raise UserError(f"{path}: no pairs (only a header)")
    return [r["premise"] for _, r in rows], [r["hypothesis"] for _, r in rows]


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
        if a.output and a.output.is_dir():
            raise UserError(f"--output {a.output} is a folder; give the name of the file to write")
        if a.output and not a.output.parent.is_dir():
            raise UserError(f"--output {a.output}: the folder {a.output.parent} does not exist")
        model, tokenizer = load(a.model)
        check_max_length(a.max_length, tokenizer, getattr(model.config, "max_position_embeddings", None))
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if a.pair:
            probs = probabilities(model, tokenizer, [a.pair[0]], [a.pair[1]], a.max_length)[0]
            print(names[int(probs.argmax())])
            for n, q in zip(names, probs.tolist()):
                print(f"  {n:<14} {q:.4f}")
            return
        premises, hypotheses = read_pairs(a.tsv)
        probs = probabilities(model, tokenizer, premises, hypotheses, a.max_length)
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(["premise", "hypothesis", "label"] + [f"p_{n}" for n in names])
        for prem, hyp, q in zip(premises, hypotheses, probs.tolist()):
            w.writerow([prem, hyp, names[max(range(len(q)), key=q.__getitem__)]] + [f"{x:.4f}" for x in q])
        if a.output:
            write_text(a.output, buf.getvalue())
        else:
            sys.stdout.write(buf.getvalue())


if __name__ == "__main__":
    main()
