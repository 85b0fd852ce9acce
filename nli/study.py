"""The study's NLI experiments in one place: the experiment list (run_all.sh, the summary and the
tests read it from here), the study's published figures, what differs from the study, and the
NLI section of summary.md.

    python -m nli.study --list      # one line per experiment: name<TAB>nli.train flags
"""
from dataclasses import dataclass
from pathlib import Path

from common.summary import list_main, mean_std, read_metrics, seed_runs, short_count
from nli.config import Experiment


@dataclass(frozen=True)
class StudyRow:
    """One experiment of the study's table: what it is (its name and flags are derived from it),
    in words, and the study's figures (one run; None where the study did not run it)."""
    experiment: Experiment
    what: str
    study: dict | None

    @property
    def name(self) -> str:  # its folder under runs/nli/
        return self.experiment.name

    @property
    def flags(self) -> str:
        return self.experiment.flags


# The study's table (val acc, test acc, train loss, val loss, test loss, F1; two decimals) and the
# test accuracy its text gives to three decimals (used for test accuracy).
def _study(val, test, train_loss, val_loss, test_loss, f1):
    return {"val_accuracy": val, "test_accuracy": test, "train_loss": train_loss, "val_loss": val_loss,
            "test_loss": test_loss, "macro_f1": f1}


EXPERIMENTS = [
    StudyRow(Experiment(), "all layers trained", _study(0.81, 0.826, 0.32, 0.74, 0.69, 0.82)),
    StudyRow(Experiment(freeze=9), "first 9 encoder layers frozen", _study(0.78, 0.790, 0.53, 0.59, 0.55, 0.79)),
    StudyRow(Experiment(freeze=12), "all 12 encoder layers frozen", _study(0.61, 0.625, 0.69, 0.82, 0.77, 0.59)),
    StudyRow(Experiment(keep_layers=9), "only the first 9 encoder layers kept",
             _study(0.81, 0.820, 0.34, 0.73, 0.67, 0.82)),
    StudyRow(Experiment(prune_heads=0.5), "half of all attention heads removed, chosen at random",
             _study(0.78, 0.795, 0.18, 1.14, 0.57, 0.79)),
    StudyRow(Experiment(prune_heads=0.5, prune_by="importance"), "the least important half of the heads removed "
             "(gradient head importance of the starting model)", None),
]
CURVE_OF = "all"  # run_all.sh draws the pruning curve (nli.prune_curve) on this experiment's model

COLUMNS = ["val_accuracy", "test_accuracy", "train_loss", "val_loss", "test_loss", "macro_f1"]

# Every way our NLI runs differ from the study's, and why (summary.md, "What differs").
DIFFERENCES = [
    "Seeds: the study ran each experiment once; we run `--seeds N` and give mean ± std, because single runs "
    "differ by about a point, as much as some ablations differ from each other.",
    "Head pruning: the study masked 50% of attention weights at random, which removes no head and saves no "
    "computation; we remove half of the heads (smaller matrices, fewer parameters). They are different "
    "experiments.",
    "The study's pruned row looks as if it did not start from the pretrained weights (its first logged loss "
    "0.356 against 0.648 for full fine-tuning, its validation loss rising to 1.14), so its 0.795 is a weak "
    "reference.",
    "Training loss: the study's is HF Trainer's logged running loss (the mean since its previous logging "
    "step); ours is the mean over the last epoch's batches. The two are close but not the same quantity.",
    "Batch composition: Trainer drew batches with a random sampler; we group pairs of similar length (groups "
    "shuffled each epoch) so little padding is computed. Which pairs share a batch differs, so runs differ "
    "by seed-level noise, not systematically.",
    "Padding: the study padded every pair to 200 tokens; we pad each batch to the next multiple of 16. "
    "Padding is masked, so this changes results only by floating-point noise.",
    "Precision: bf16 autocast on GPUs that support it (the study: fp32); weights and optimizer state stay "
    "fp32.",
    "Same as the study: Trainer's defaults otherwise (batch 16, lr 3e-5 decaying linearly to 0 without "
    "warm-up, AdamW without weight decay, gradient clipping 1.0, 3 epochs, max length 200), the final model "
    "reported, freezing only encoder layers, keeping layers 0-8.",
]


def section(root: Path, seeds: int, missing: list) -> list[str]:
    """The NLI part of summary.md: ours and the study's figures row by row, label counts, links."""
    head = ("| experiment | run | val acc | test acc | train loss | val loss | test loss | test macro F1 | "
            "trainable / total params | train time (s) | pairs/s | test acc, hard hypothesis | "
            "test acc, hard overlap |")
    lines = ["## NLI: ParsBERT on FarsTail", "", head, "|" + "---|" * 13]
    run_links: list[str] = []
    first = None
    for e in EXPERIMENTS:
        runs = seed_runs(root, f"nli/{e.name}", seeds, missing, run_links)
        label = f"{e.name} ({e.what}{'; ' + e.flags if e.flags else ''})"
        if runs:
            first = first or runs[0]
            col = lambda f: mean_std([f(m) for m in runs])  # noqa: E731
            p = runs[0]["params"]
            lines.append("| " + " | ".join([
                label, "ours", col(lambda m: m["val"]["accuracy"]), col(lambda m: m["test"]["accuracy"]),
                col(lambda m: m["train"]["loss"]), col(lambda m: m["val"]["loss"]), col(lambda m: m["test"]["loss"]),
                col(lambda m: m["test"]["macro_f1"]), f"{short_count(p['trainable'])} / {short_count(p['total'])}",
                mean_std([m["speed"]["train_seconds"] for m in runs], 1),
                mean_std([m["speed"]["items_per_s"] for m in runs], 1),
                col(lambda m: m["test_subsets"]["hard_hypothesis"]),
                col(lambda m: m["test_subsets"]["hard_overlap"])]) + " |")
        else:
            lines.append(f"| {label} | ours: missing |" + " |" * 11)
        if e.study:
            lines.append("| | study | " + " | ".join(f"{e.study[c]:.3f}".rstrip("0").rstrip(".")
                                                  if c == "test_accuracy" else f"{e.study[c]:.2f}"
                                                  for c in COLUMNS) + " | | | | | |")
    n = f"{seeds} seeds (mean ± std)" if seeds > 1 else "one seed"
    lines += ["", f"Ours: the final model after the last epoch, {n}. Study: one run each, the figures it published "
                  "(test accuracy to three decimals from its text, the rest from its table). Train loss: ours is the "
                  "last epoch's mean, the study's Trainer's logged running loss. Hard subsets: FarsTail's own "
                  "hard(hypothesis) and hard(overlap) test columns."]
    curves = [c for c in (read_metrics(root / "nli" / CURVE_OF / f"seed{k}" / "prune_curve") for k in range(seeds)) if c]
    if curves:
        heads = curves[0]["heads"]
        budget = lambda m: mean_std([c["head_budget"][m]["heads"] for c in curves if m in c["head_budget"]], 0)  # noqa: E731
        methods = [m for m in ("importance", "importance-iterative", "random") if m in curves[0]["head_budget"]]
        lines += ["", f"**Pruning curve** of the `{CURVE_OF}` model, heads removed with no retraining "
                      f"(`python -m nli.prune_curve`; seed 0 shown): "
                      f"![pruning curve](nli/{CURVE_OF}/seed0/prune_curve/prune_curve.png)", "",
                  f"Heads that can go before test accuracy falls more than one point below the whole model's, of "
                  f"{heads}: " + "; ".join(f"{m} {budget(m)}" for m in methods)
                  + " (random: the mean over its draws). Importance is computed on training pairs, never the test "
                    f"split. Importance per head: [heat map](nli/{CURVE_OF}/seed0/prune_curve/head_importance.png), "
                    f"[report](nli/{CURVE_OF}/seed0/prune_curve/report.txt)."]
    if first and "label_counts" in first:
        counts = first["label_counts"]
        labels = list(next(iter(counts.values())))
        lines += ["", "FarsTail labels per split (the data the runs read):", "",
                  "| split | " + " | ".join(labels) + " | total |", "|" + "---|" * (len(labels) + 2)]
        lines += [f"| {k} | " + " | ".join(str(v[n]) for n in labels) + f" | {sum(v.values())} |"
                  for k, v in counts.items()]
    return lines + ["", *run_links, ""]


if __name__ == "__main__":
    list_main("nli.study", "The study's NLI experiments.", EXPERIMENTS)
