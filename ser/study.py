"""The study's SER experiment in one place: its published figures, the three protocols run_all.sh
runs per seed (the study's own, and ours two ways: ser/splits.py's Protocol), what differs from
the study, and the SER section of summary.md.

    python -m ser.study --list      # one line per protocol: name<TAB>ser.train flags
    python -m ser.study             # every difference from the study, and why
"""
import numpy as np

from common.results import accuracy_over
from common.stats import interval_text
from common.summary import (comparison_cell, comparison_words, comparisons, header, list_main, mean_std, row,
                            seeds_note)
from ser.splits import Protocol

# The study's one run: accuracy of its final model on each split (it reported no UAR or F1).
PUBLISHED = {"train": 0.963, "val": 0.899, "test": 0.912}
# The smoke run's rows: its tiny HuBERT learns the generated emotions (tests/test_run_all.py holds it to 0.8)
SMOKE_LEARNS = "SER's rows (the generated emotions differ in pitch and loudness; chance 1/6)"

# The protocols run_all.sh runs per seed: the study's own, and ours two ways (ser/splits.py).
PROTOCOLS = [Protocol("study"), Protocol("leak-free", "random"), Protocol("leak-free", "speaker")]


# Every way our SER runs differ from the study's, and why (summary.md, "What differs").
DIFFERENCES = [
    "Protocol: the study balanced the whole corpus by augmentation before splitting, so copies of validation and "
    "test clips were trained on, and its test split was about half copies and nearly class-balanced. We run its "
    "protocol and ours side by side on the same data (table above). The two test sets differ, so the difference of "
    "their accuracies mixes four things: copies of test clips in training (the leak), copies inside the study's test "
    "split, a balanced test split against ShEMO's natural class mix, and seed noise.",
    "Class mixture: the leak-free test splits hold ShEMO's natural mix (about 35% anger and 34% neutral, few fear "
    "clips); accuracies over different mixtures are not ordered, so UAR (mean recall over classes) stands beside "
    "accuracy.",
    "Speakers: a random split (the study's, and our leak-free random) puts the same speakers in training and test; "
    "the speaker-independent protocol does not.",
    "Split: the study used scikit-learn's train_test_split (0.2, then 0.5 of the rest) with random_state=10 on its "
    "own file order, the first part of the second split its test set (635 test, 636 evaluation items). Our study "
    "protocol does the same (random_state 10 unless --split-seed says otherwise; the training seed is --seed) on our "
    "pool order: original clips in path order, then the augmented copies class by class. The study does not show its "
    "order, and the split depends on it: the same 6,354 items reordered by class leave 246 of 635 test items in "
    "common (a reviewer's measurement), so its items and ours differ unless the orders match.",
    "Feature extractor: the study built its extractor from facebook/wav2vec2-base-960h, not from the HuBERT "
    "checkpoint; --protocol study uses those settings (16 kHz, padding value 0, do_normalize=True, no attention "
    "mask), built in code since no hub is reachable. With return_attention_mask=False transformers pads, then "
    "normalises the whole padded row, so the study's padding was not zero after normalisation and short clips were "
    "rescaled by their batchmate's length (Normalisation below). The leak-free protocols use the model's own "
    "extractor where it has one.",
    "Resampling: torchaudio's (windowed sinc) instead of librosa's (soxr_hq by default): resampled samples differ a "
    "little.",
    "Clips: we zero-pad clips shorter than 0.5 s to 0.5 s (so HuBERT's SpecAugment time masks fit) and skip silent "
    "or unreadable files, naming them; the study used every file as read.",
    "Copies: every augmented copy gets both a pitch shift and a time stretch, from a class's source clips in turn. "
    "The study's text is ambiguous: it may have applied one or the other per copy, and drawn the sources at random.",
    "Training curve: the study's training accuracy per epoch is over the whole training set after the epoch; ours "
    "(history.csv's train_accuracy) is the running accuracy during the epoch. The final model's training-split "
    "accuracy (the table's train acc) is computed as the study did.",
    "Optimizer and schedule: the study names none; AdamW without weight decay at a constant learning rate, with no "
    "gradient clipping, is our assumption.",
    "Pooling: the study averaged HuBERT's output over all frames, padding included; we average over each clip's own "
    "frames.",
    "Normalisation: the study's feature extractor normalised each padded batch row (padding included); we normalise "
    "each clip before padding it. Measured alone, in the study's own loop on a tiny random HuBERT (14 steps of batch "
    "2, clips of 0.5-2.5 s; python -m tests.test_ser_reference): per-step losses within 9e-4, weights 3% apart "
    "relative to how far training moved them; small mostly because the group norm after HuBERT's first convolution "
    "removes the loudness that normalising a padded row changes.",
    "Padding: the study padded each batch to its longest clip; we pad to whole seconds (few shapes). With HuBERT's "
    "group norm a clip's output depends a little on its padding; evaluation and ser.predict pad alike, so they "
    "agree. On clips of one whole-second length (no padding either way) our loop is the study's, step for step, "
    "LayerDrop included (tests/test_ser_reference.py); on the unequal clips above, padding, pooling and "
    "normalisation together put the per-step losses up to 0.07 apart and the weights 60% of the distance training "
    "moved them.",
    "Batch composition: the study's loader shuffled clips (shuffle=True); we group clips of similar length.",
    "Augmentation ranges: ±2 semitones and a stretch of 0.85-1.15 are ours; the study gives none.",
    "Augmentation backend: the study used librosa; we use audiomentations with method librosa_phase_vocoder "
    "(librosa's pitch_shift and time_stretch) by default, or signalsmith_stretch with --augment-method signalsmith.",
    "LayerDrop and SpecAugment: drawn on the device (so CUDA graphs replay fresh draws); spans stay inside each "
    "clip, where transformers also masks padding. A dropped layer is computed and its output discarded; its weights "
    "and AdamW state are put back after the step, so the update is transformers' (which skips the layer, its "
    "gradients None). Before this was done, its weights moved by momentum: a tiny run at LayerDrop 0.5 drifted by up "
    "to 0.013 in per-step loss within 14 steps.",
    "Precision: bf16 autocast on GPUs that support it (the study: fp32).",
]


# What the SER section reads from each run's metrics.json, and from the folds' (common.summary.check_shape)
REQUIRED = ("train.accuracy", "train.uar", "val.accuracy", "val.uar", "val.macro_f1", "test.accuracy", "test.uar",
            "test.macro_f1", "test.per_class{}", "test.intervals{}", "split_items{}", "class_counts.splits.test{}", "speed.items_per_s")
LEAK = ("test_leak{}", *(f"test_leak.{g}.items" for g in (
    "original clips", "augmented copies", "source clip also in training", "source clip not in training")))
REQUIRED_FOLDS = ("folds", "per_fold[]", "pooled.accuracy", "pooled.uar", "pooled.macro_f1", "pooled.intervals{}",
                  "by_gender{}")


def section(report) -> list[str]:
    """The SER part of summary.md (`report`: common.summary.Report): the study's figures with every
    protocol beside them, then our additions, the leak, the folds and the class counts."""
    seeds = report.seeds
    n = f"{seeds} seeds, mean ± std" if seeds > 1 else "one seed"
    table = header("protocol", "run", "train acc", "val acc", "test acc [95% CI]")
    extra = header("protocol", "train UAR", "val UAR", "val macro F1", "test UAR [95% CI]", "test macro F1 [95% CI]",
                   "test items (augmented)", "speakers train / val / test", "clips/s, audio-s/s")
    found, legend = {}, []
    for p in [p for p in PROTOCOLS if report.asked(p.name)]:
        legend.append(f"`{p.name}`: {p.what}")
        runs = report.runs(f"ser/{p.name}", REQUIRED + (LEAK if p.name == "study" else ()))
        if not runs:
            table.append(row(p.name, "ours: missing", "", "", ""))
        else:
            found[p.name] = runs
            name, col, test = report.measured("SER", p.name, runs, PUBLISHED["test"] if p.name == "study" else None)
            items = runs[0]["split_items"]
            table.append(row(name, "ours", col("train", "accuracy"), col("val", "accuracy"), test["accuracy"]))
            extra.append(row(name, col("train", "uar"), col("val", "uar"), col("val", "macro_f1"), test["uar"],
                             test["macro_f1"], f"{items['test']['items']} ({items['test']['augmented']})",
                             " / ".join(str(items[k].get("speakers") or "n/a") for k in ("train", "val", "test")),
                             f"{col('speed', 'items_per_s', 1)}, {col('speed', 'audio_seconds_per_s', 1)}"))
        if p.name == "study":
            table.append(row("", "study", *(f"{PUBLISHED[k]:.3f}" for k in ("train", "val", "test"))))
    folded = (report.runs(f"ser/{FOLDS.name}", REQUIRED_FOLDS)
              if report.asked(FOLDS.name) and (report.root / "ser" / FOLDS.name).is_dir() else [])
    fold_lines = []
    if folded:  # (the pooled figures: mean ± std over seeds, the first seed's interval)
        m, per_fold = folded[0], [f for r in folded for f in r["per_fold"]]
        pooled = lambda key: (f"{mean_std([r['pooled'][key] for r in folded])} "  # noqa: E731
                              f"{interval_text(m['pooled']['intervals'][key])}")
        legend.append(f"`{FOLDS.name}`: {m['folds']} speaker-independent folds, each tested once; its figures are over "
                      "every fold's test clips pooled" + (f" (seeds {', '.join(str(r['_seed']) for r in folded)}: the "
                      f"pooled figures are mean ± std over them, the interval seed {m['_seed']}'s)" if len(folded) > 1
                      else ""))
        table.append(row(FOLDS.name + seeds_note(folded, seeds), "ours", "", "", pooled("accuracy")))
        report.points.append((f"SER {FOLDS.name}", float(np.mean([r["pooled"]["accuracy"] for r in folded])),
                              m["pooled"]["intervals"]["accuracy"], None))
        extra.append(row(FOLDS.name + seeds_note(folded, seeds), "", "", "", pooled("uar"), pooled("macro_f1"),
                         f"every clip once ({sum(f['test_items'] for f in m['per_fold'])})",
                         " / ".join(mean_std([f[f"{k}_speakers"] for f in per_fold], 1)
                                    for k in ("train", "val", "test")), ""))
        fold_lines = [
            "", f"**Speaker-independent folds**: mean ± std over the folds{' of every seed' * (len(folded) > 1)}: "
            + ", ".join(f"test {w} {mean_std([f[f'test_{k}'] for f in per_fold])}"
                        for k, w in (("accuracy", "accuracy"), ("uar", "UAR"), ("macro_f1", "macro F1")))
            + f". Seed {m['seed']}: test accuracy per fold "
            + ", ".join(f"fold {f['fold']} {f['test_accuracy']:.4f} (UAR {f['test_uar']:.4f}; speakers "
                        f"{f['train_speakers']}/{f['val_speakers']}/{f['test_speakers']})" for f in m["per_fold"])
            + "; by the speaker's gender, every fold's test clips pooled: " + ("; ".join(
                f"{g} {accuracy_over(v, 'clips')}" for g, v in m["by_gender"].items()) or "n/a") + "."]
    if report.tested:
        report.findings.append("SER, test accuracy [95% interval] by protocol (the study published only its own): "
                               + ", ".join(report.tested) + ". The protocols test different items: see the leak below.")
    lines = ["## SER: HuBERT on ShEMO", "", f"The study's figures, every protocol beside them ({n}):", "", *table, "",
             *[f"- {x}" for x in legend],
             "- `study` (the published run): its protocol, one seed; its test split about half augmented copies, "
             "nearly balanced (the corpus was balanced to the largest class first).", "",
             "**Our additions**: UAR (unweighted average recall: the mean of the per-class recalls), macro F1, the "
             "test split's size, speakers and speed:", "", *extra]
    if "study" in found:  # (LEAK makes every study run hold test_leak)
        study = found["study"]
        leak = "; ".join(f"{k}, {accuracy_over(v, 'items')}" for k, v in study[0]["test_leak"].items())
        lines += ["", f"**The leak inside the study's own test split** (seed {study[0]['seed']}; one test split, two "
                      "ways: original clips against copies, clips whose source training saw against the others): test "
                      f"accuracy of {leak}."]
    lines += fold_lines
    if "study" in found and len(found) > 1:
        mean = lambda runs, k: sum(m["test"][k] for m in runs) / len(runs)  # noqa: E731
        s_acc, s_uar = mean(study, "accuracy"), mean(study, "uar")
        lines += ["", f"**Measured on these runs** ({f'{seeds} seeds' if seeds > 1 else 'one seed'}), test accuracy: "
                  f"the study's protocol {s_acc:.4f} (UAR {s_uar:.4f}); " + "; ".join(
                      f"{name} {mean(r, 'accuracy'):.4f} (UAR {mean(r, 'uar'):.4f}; the study's protocol minus this: "
                      f"{100 * (s_acc - mean(r, 'accuracy')):+.1f} points of accuracy, "
                      f"{100 * (s_uar - mean(r, 'uar')):+.1f} of UAR)" for name, r in found.items() if name != "study")
                  + ". The test sets differ, so each difference mixes the leak (copies of test clips in training), "
                    "copies in the study's test split, a balanced against a natural class mix and seed noise, not the "
                    "leak alone."]
    against = {name: comparisons(name, found) for name in found}
    pairs = {(a, b): r for a, res in against.items() for b, r in res.items() if a < b}
    lines += ["", "Paired tests: " + ("; ".join(f"{b} against {a}: {comparison_cell(r)}" for (a, b), r in pairs.items())
                                      + ". " + comparison_words("each other", len(pairs), "test clips") if pairs else
                                      "no two protocols test the same items (each splits the corpus its own way), so "
                                      "none is paired; the leak is measured inside the study's test split (above).")]
    if found:
        lines += ["", "Clips per class in the corpus as read: " + ", ".join(
            f"{k} {v}" for k, v in next(iter(found.values()))[0]["class_counts"]["corpus"].items()) + "."]
        lines += [f"- {name}, seed {runs[0]['_seed']}: " + "; ".join(
            f"{k} {sum(v.values())} ({', '.join(f'{n} {x}' for n, x in v.items())})"
            for k, v in runs[0]["class_counts"]["splits"].items()) for name, runs in found.items()]
    lines += ["", "Ours: the final model. A class a split does not hold is left out of its UAR and macro F1 (and named "
                  "in the run's report). Intervals: 95%, percentile bootstrap over the test items."]
    return lines


FOLDS = Protocol("leak-free", "speaker", folds=1)  # (only its name: the folder of run_all.sh --ser-folds K)


if __name__ == "__main__":
    list_main("ser.study", "The study's SER protocols.", PROTOCOLS, DIFFERENCES,
              folds=lambda k: [Protocol("leak-free", "speaker", folds=k)])
