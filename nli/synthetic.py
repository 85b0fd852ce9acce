"""Small stand-ins for the real inputs, for the tests and `run_all.sh --smoke`: FarsTail-shaped
files of generated Persian sentences, and a tiny randomly initialised BERT with a WordPiece
vocabulary, saved with save_pretrained so it loads through `--model DIR` like a real model.

    python -m nli.synthetic --data DIR --model DIR [--rows 120 60 60] [--layers 12]

The labels follow a rule a tiny model learns in the smoke run's 60 steps (`--rows 480 80 80`, 2
epochs): a hypothesis repeats words of its premise and ends with the premise's verb (entailment),
a negation (contradiction) or "maybe", a word no premise has (neutral). Its last word gives the
label, so the hypothesis-only baseline learns it too. The model's pooler and classifier are drawn
at std 0.2 instead of 0.02: at 0.02, a 12-layer tiny BERT had not learned even this rule after
300 steps (NOTES.md, 2026-12-01 night).
"""
import argparse
import csv
import random
import unicodedata
from pathlib import Path

from common.outdir import claim

WORDS = ("کتاب دانشجو دانشگاه شهر تهران ایران فرهنگ تاریخ علم هنر زبان فارسی شعر کار خانه مدرسه معلم "
         "درس آب باران کوه دریا جنگل درخت گل باغ روز شب سال ماه خورشید ستاره مردم کشور دولت اقتصاد "
         "بازار پول خبر روزنامه رادیو فیلم سینما موسیقی ورزش فوتبال تیم بازی پزشک بیمار دارو").split()
VERBS = "است بود شد کرد دارد رفت آمد".split()
NEGATION = "نیست"
MAYBE = "شاید"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[MASK]", "[SEP]"]  # ParsBERT's ids 0..4


def pair(rng: random.Random, label: str) -> tuple[str, str]:
    premise = rng.sample(WORDS, rng.randint(3, 10)) + [rng.choice(VERBS)]
    hyp = rng.sample(premise[:-1], rng.randint(2, min(6, len(premise) - 1)))
    hyp.append({"e": premise[-1], "c": NEGATION, "n": MAYBE}[label])
    return " ".join(premise) + ".", " ".join(hyp) + "."


def write_farstail(folder: Path, rows=(120, 60, 60), seed: int = 0) -> None:
    """Train/Val/Test-word.csv as FarsTail's (tabs, CSV quoting, test's hard columns); a few fields hold
    quotes and a tab, which a reader splitting lines on tabs would break."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("Train", "Val", "Test"), rows):
        with open(folder / f"{name}-word.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["premise", "hypothesis", "label"] + (["hard(hypothesis)", "hard(overlap)"] if name == "Test" else []))
            for i in range(n):
                label = "ecn"[i % 3]
                p, h = pair(rng, label)
                if i % 17 == 5:
                    p = f'«{p}» "نقل\tقول"'
                extra = [rng.randint(0, 1), rng.randint(0, 1)] if name == "Test" else []
                w.writerow([p, h, label] + extra)


def write_tiny_bert(folder: Path, layers: int = 12, hidden: int = 32, heads: int = 4, seed: int = 0) -> None:
    """A BERT of the given depth with tiny widths and a WordPiece vocabulary of WORDS."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    # Entries as BERT's normaliser leaves the text (lower case, accents stripped: آ becomes ا),
    # or they would never match. (transformers 5.x takes the file as `vocab=`; `vocab_file=` is ignored.)
    words = WORDS + VERBS + [NEGATION, MAYBE, ".", "«", "»", '"', "نقل", "قول"]
    plain = ["".join(c for c in unicodedata.normalize("NFD", w.lower()) if unicodedata.category(c) != "Mn")
             for w in words]
    vocab = SPECIAL + list(dict.fromkeys(plain))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=256, num_labels=3)
    model = BertForSequenceClassification(cfg)
    for head in (model.bert.pooler.dense, model.classifier):  # (why 0.2: the module docstring)
        torch.nn.init.normal_(head.weight, std=0.2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nli.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder for the three FarsTail-shaped files")
    p.add_argument("--model", type=Path, required=True, help="folder for the tiny BERT")
    p.add_argument("--rows", type=int, nargs=3, default=(120, 60, 60), help="train, val, test rows")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.layers < 1 or min(a.rows) < 1:
        p.error("--layers and every --rows must be at least 1")
    if problem := claim([a.data, a.model], "nli.synthetic"):
        p.error(problem)
    write_farstail(a.data, a.rows, a.seed)
    write_tiny_bert(a.model, a.layers, seed=a.seed)


if __name__ == "__main__":
    main()
