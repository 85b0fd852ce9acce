"""The study's NLI experiments in one place: the experiment list (run_all.sh, the summary and the
tests read it from here), the study's published figures, what differs from the study, and the
NLI section of summary.md.

    python -m nli.study --list      # one line per experiment: name<TAB>nli.train flags
    python -m nli.study             # every difference from the study, and why
"""
from dataclasses import dataclass

from common.spec import recorded_arg
from common.summary import (comparison_cell, comparison_words, comparisons, header, list_main, mean_std, read_metrics,
                            row, short_count)
from nli.config import Experiment


@dataclass(frozen=True, kw_only=True)
class StudyRow(Experiment):
    """One experiment of the table: in words, the study's figures (None where it did not run it),
    the study's method where its row beside it differs, and notes on self-contradicting cells."""
    what: str
    study: dict | None = None
    study_method: str = ""
    notes: tuple = ()


# The study's figures in the table's column order: val accuracy from its log, test accuracy from its text (three
# decimals; the table's where they differ), train loss as Trainer last logged it (steps 501-1000 of 1365), the rest
# from its table.
STUDY_CELLS = ["val_accuracy", "test_accuracy", "trainer_logged_loss", "val_loss", "test_loss", "macro_f1"]


def _study(*figures):
    return dict(zip(STUDY_CELLS, figures))


EXPERIMENTS = [
    StudyRow(what="all layers trained", study=_study(0.812, 0.826, 0.32, 0.74, 0.69, 0.82)),
    StudyRow(freeze=9, what="first 9 encoder layers frozen", study=_study(0.784, 0.78, 0.53, 0.59, 0.55, 0.79),
             notes=("the study's test accuracy for freeze9 is 0.78 in its table and 0.7896 in its log; the table's "
                    "value is shown",)),
    StudyRow(freeze=12, what="all 12 encoder layers frozen", study=_study(0.613, 0.625, 0.69, 0.82, 0.77, 0.59)),
    StudyRow(keep_layers=9, what="only the first 9 encoder layers kept",
             study=_study(0.807, 0.820, 0.34, 0.73, 0.67, 0.82)),
    StudyRow(prune_heads=0.5, what="ours: half of all attention heads removed structurally, chosen at random",
             study=_study(0.780, 0.795, 0.18, 1.14, 0.57, 0.79),
             study_method="its pruning, 50% of attention weight entries masked (prune0.5-masking's method)",
             notes=("the study's validation loss for its pruned model is 1.14 in its table and 1.147 in its log; the "
                    "table's value is shown",)),
    StudyRow(prune_heads=0.5, prune_by="masking", what="the study's method: random 50% of the entries "
             "of every attention weight masked with torch.nn.utils.prune, no head removed"),
    StudyRow(prune_heads=0.5, prune_by="importance", what="ours: the least important half of the heads "
             "removed (gradient head importance of the starting model)"),
    StudyRow(hypothesis_only=True, what="ours: the premise left out, the dataset-artifact baseline: what a "
             "model gets from the hypothesis alone"),
]
CURVE_OF = "all"  # run_all.sh draws the pruning curve (nli.prune_curve) on this experiment's model
REFERENCE = "all"  # every other experiment is compared with this one on the same test pairs
# What the smoke run's rows show (its generated rule: nli/synthetic.py)
SMOKE_LEARNS = ("NLI's rows (the hypothesis's last word gives the label, so hypothesis-only learns it too; "
                "near chance, 1/3: freeze12, whose 12 layers keep their random weights, and prune0.5-masking, "
                "half of every attention weight masked)")

# Every way our NLI runs differ from the study's, and why (summary.md, "What differs").
DIFFERENCES = [
    "Checkpoint: the study's code names ParsBERT without a version. Its printed token counts (longest training "
    "premise 134 word pieces, hypothesis 55) come out exactly with ParsBERT v1's vocabulary "
    "(HooshvareLab/bert-base-parsbert-uncased; FarsTail's training split, NOTES.md 2026-12-01): our default. "
    "ParsBERT v2.0 (HooshvareLab/bert-fa-base-uncased, our earlier default) rebuilt the vocabulary, and no copy of "
    "it was reachable offline to count with, so v1 is the evidence's answer, not a certainty. v2 is one flag away: "
    "--model HooshvareLab/bert-fa-base-uncased.",
    "Seeds: the study ran each experiment once, its seed not shown (assumed: HF Trainer's default, 42); we run "
    "`--seeds N` (seeds 0 ... N-1) and give mean ± std, to set a difference between ablations against the spread "
    "between seeds.",
    "Pruning: the study's \"pruning\" masked 50% of the entries of every attention weight at random "
    "(torch.nn.utils.prune.random_unstructured on every parameter whose name contains \"attention\" and ends in "
    "\"weight\", read literally also attention.output.LayerNorm.weight): no head removed, no computation saved. "
    "`prune0.5-masking` runs that described method (the study shows a sentence, not its code) on the pretrained "
    "model; `prune0.5` removes half of the heads structurally (smaller matrices, fewer parameters), as a pruning "
    "ablation usually means. Different experiments: the table shows both beside the study's row.",
    "An observation, not a fact: the study's log for its pruned model starts at a training loss of 0.356 at step "
    "500, near its fully fine-tuned model's (0.32 at step 1000), not a fresh start's from the pretrained weights "
    "(0.648 at step 500 for its full model), and its validation loss rises to 1.14: this suggests it was fine-tuned "
    "from an already fine-tuned model. Our prune0.5-masking masks the pretrained model and fine-tunes it once, so "
    "the starting points may differ.",
    "Training loss: the study's is HF Trainer's log, the mean of each 500 steps (logging_steps); of its 1,365 steps, "
    "the last value logged, which its table shows, is the mean of steps 501-1000, mostly epoch 2. The table gives "
    "ours computed the same way (\"train loss, Trainer's log\"), beside our last epoch's mean, a different quantity.",
    "Published cells where the study contradicts itself: freeze9's test accuracy (0.78 in its table, 0.7896 in its "
    "log) and its pruned model's validation loss (1.14, 1.147); we quote the table. Validation accuracies are quoted "
    "to three decimals from its logs.",
    "Batch composition: Trainer drew batches with a random sampler; we group pairs of similar length (groups "
    "shuffled each epoch), so little padding is computed. Whether the different batchmates shift results on the real "
    "model is not measured.",
    "Padding: the study padded every pair to 200 tokens; we pad each batch to the next multiple of 16. Padding is "
    "masked, so this changes results only by floating-point noise (tests/test_step.py).",
    "Precision: bf16 autocast on GPUs that support it (the study: fp32); weights and optimizer state stay fp32.",
    "Same as the study: batch 16, lr 3e-5, 3 epochs, max length 200; assumed, as HF Trainer's defaults the study "
    "shows no change to: linear decay of the learning rate to 0 without warm-up, AdamW without weight decay, "
    "gradient clipping 1.0; the final model reported, freezing only encoder layers, keeping layers 0-8, label ids "
    "e/c/n = 0/1/2.",
]


# What the NLI section reads from each run's metrics.json (common.summary.check_shape)
REQUIRED = ("val.accuracy", "val.loss", "train.loss", "test.accuracy", "test.uar", "test.loss", "test.macro_f1",
            "test.per_class{}", "test.intervals{}", "params.trainable", "params.total", "speed.train_seconds", "speed.items_per_s",
            "test_subsets.hard_hypothesis", "test_subsets.hard_overlap")


def section(report) -> list[str]:
    """The NLI part of summary.md (`report`: common.summary.Report): the study's table with ours
    beside it, then our additions, the pruning curve, the label counts and links."""
    seeds, experiments = report.seeds, [e for e in EXPERIMENTS if report.asked(e.name)]
    found = {e.name: runs for e in experiments if (runs := report.runs(f"nli/{e.name}", REQUIRED))}
    against = comparisons(REFERENCE, found)
    first = next(iter(found.values()), [None])[0]
    n = f"{seeds} seeds, mean ± std" if seeds > 1 else "one seed"
    table = header("experiment", "run", "val acc", "test acc [95% CI]", "train loss (Trainer's log)", "val loss",
                   "test loss", "test macro F1 [95% CI]")
    extra = header("experiment", "train loss (last epoch)", "trainable / total params", "train time (s)", "pairs/s",
                   "test acc, hard hypothesis", "test acc, hard overlap", f"test acc − {REFERENCE}'s [95% CI], McNemar p")
    for e in experiments:
        runs = found.get(e.name)
        if not runs:
            table.append(row(e.name, "ours: missing", *[""] * 6))
        else:
            name, col, test = report.measured("NLI", e.name, runs, e.study and e.study["test_accuracy"])
            p = runs[0]["params"]
            table.append(row(name, "ours", col("val", "accuracy"), test["accuracy"],
                             col("train", "trainer_logged_last"), col("val", "loss"), col("test", "loss"),
                             test["macro_f1"]))
            extra.append(row(name, col("train", "loss"), f"{short_count(p['trainable'])} / {short_count(p['total'])}",
                             col("speed", "train_seconds", 1), col("speed", "items_per_s", 1),
                             col("test_subsets", "hard_hypothesis"), col("test_subsets", "hard_overlap"),
                             comparison_cell(against.get(e.name))))
        if e.study:
            table.append(row("", "study", *(study_cell(e.study, c) for c in STUDY_CELLS)))
    if report.tested:
        report.findings.append("NLI, test accuracy [95% interval] and whether the study's figure lies inside it: "
                               + ", ".join(report.tested) + ".")
    logged = first["train"].get("trainer_logged") if first else None
    every = recorded_arg(report.root / "nli" / first["experiment"] / f"seed{first['_seed']}",
                         "trainer_logging_steps") if first else None
    window = f"steps {logged[-1]['steps']}" if logged else f"none: the runs have fewer than {every or '?'} steps"
    lines = ["## NLI: ParsBERT on FarsTail", "", f"The study's table, ours beside it ({n}):", "", *table, "",
             *(f"- `{e.name}`: {e.what}" + (f" (`{e.flags}`)" if e.flags else "")
               + (f"; the study's row beside it: {e.study_method}" if e.study_method else "") for e in experiments), "",
             "Ours: the final model. Study: one run each, as published (validation accuracy to three decimals from its "
             "log, test accuracy to three from its text, the rest from its table). Train loss (Trainer's log): the "
             f"mean of the last full logging_steps window, as HF Trainer logs it (here {window}) and the study's table "
             "shows it. Intervals: 95%, percentile bootstrap over the test pairs (common/stats.py).",
             *(f"- Note: {e.name}: {x}." for e in experiments for x in e.notes), "",
             "**Our additions**: the mean training loss of the last epoch, size, speed, FarsTail's own hard subsets "
             "of the test split (its hard(hypothesis) and hard(overlap) columns) and each experiment against "
             f"`{REFERENCE}` on the same test pairs:", "", *extra]
    if against:
        lines += ["", comparison_words(f"`{REFERENCE}`", len(against), "test pairs")
                  + (f" With {seeds} seeds, the difference is that of the seed-averaged accuracies and McNemar's test "
                     "counts a pair as right for a model when at least half of its seeds get it right (a tie counts "
                     "as right)." if seeds > 1 else "")]
    curves = [c for c in (read_metrics(report.root / "nli" / CURVE_OF / f"seed{k}" / "prune_curve")
                          for k in range(seeds)) if c]
    if curves:
        at = lambda m, k, d: mean_std([c["head_budget"][m][k] for c in curves if m in c["head_budget"]], d)  # noqa: E731
        methods = [m for m in ("importance", "importance-iterative", "random") if m in curves[0]["head_budget"]]
        folder = f"nli/{CURVE_OF}/seed0/prune_curve"
        lines += ["", f"**Pruning curve** of the `{CURVE_OF}` model, heads removed with no retraining (`python -m "
                      f"nli.prune_curve`; seed 0 shown): ![pruning curve]({folder}/prune_curve.png)", "",
                  f"Heads that can go before validation accuracy falls more than one point below the whole model's, of "
                  f"{curves[0]['heads']}, and test accuracy there (whole model: "
                  f"{mean_std([c['whole']['test_accuracy'] for c in curves])}): " + "; ".join(
                      f"{m} {at(m, 'heads', 0)} (test {at(m, 'test_accuracy', 4)})" for m in methods)
                  + " (random: the mean over its draws). The budget is chosen on validation, the test split only "
                    "reported; importance on training pairs. Importance per head: "
                    f"[heat map]({folder}/head_importance.png), [report]({folder}/report.txt)."]
    if first and "label_counts" in first:
        counts = first["label_counts"]
        labels = list(next(iter(counts.values())))
        lines += ["", "FarsTail labels per split (the data the runs read):", "", *header("split", *labels, "total")]
        lines += [row(k, *(v[x] for x in labels), sum(v.values())) for k, v in counts.items()]
    return lines


def study_cell(figures: dict, key: str) -> str:
    """A study figure as it published it: accuracies to three decimals, losses and F1 to two."""
    text = f"{figures[key]:.3f}" if key.endswith("accuracy") else f"{figures[key]:.2f}"
    return text.rstrip("0").rstrip(".") if key == "test_accuracy" else text


if __name__ == "__main__":
    list_main("nli.study", "The study's NLI experiments.", EXPERIMENTS, DIFFERENCES)
