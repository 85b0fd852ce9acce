"""The result files of one SER run: model/, history.csv, plots, report.txt, then metrics.json,
written last because its presence marks the run finished (common/checkpoint.py)."""
from dataclasses import dataclass, field

import numpy as np

from common.files import atomic_write, write_json, write_text
from common.metrics import confusion, report_text
from common.plots import plot_confusion, plot_counts, plot_curves, plot_histograms
from common.results import RunResult, accuracy_over, epoch_table, with_intervals, write_text_csv
from common.stats import accuracy_interval
from ser.model import save_classifier

HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "val_uar",
                  "test_accuracy", "test_uar", "seconds", "items_per_s", "warmup_seconds", "items_per_s_steady"]


@dataclass
class SERResult(RunResult):
    """A finished SER run: the common figures (`train`: the final model on the training split), and
    the corpus and split (`records`: split.csv's rows; `measure_leak`: the study's protocol)."""
    records: dict = field(default_factory=dict)
    measure_leak: bool = False
    class_counts: dict = field(default_factory=dict)
    split_items: dict = field(default_factory=dict)
    skipped_files: list = field(default_factory=list)
    clip_seconds: list = field(default_factory=list)
    recipe: str = ""

    def task_metrics(self) -> dict:
        return {"class_counts": self.class_counts, "split_items": self.split_items, "skipped_files": self.skipped_files,
                **({"test_leak": self.leak_split()} if self.measure_leak else {})}

    def item_extras(self, split: str) -> list[dict]:
        return [{k: r[k] for k in ("path", "speaker", "augmentation", "source_also_in")} for r in self.records[split]]

    def leak_split(self) -> dict:
        """The leak inside the test split: test accuracy (items, 95% interval) of original clips against
        copies, and of items whose source clip training also saw against the others."""
        records, correct = self.records["test"], self.predictions()["test"] == self.label_ids["test"]
        copy = np.array([bool(r["augmentation"]) for r in records])
        seen = np.array(["train" in r["source_also_in"].split(";") for r in records])
        groups = {"original clips": ~copy, "augmented copies": copy, "source clip also in training": seen,
                  "source clip not in training": ~seen}
        return {name: {"items": int(mask.sum()), "accuracy": float(correct[mask].mean()) if mask.any() else None,
                       "interval": accuracy_interval(correct[mask])} for name, mask in groups.items()}


def counts_table(counts: dict) -> str:
    """Clips per class: the corpus as read, and each split (training before and after balancing)."""
    rows = {"corpus as read": counts["corpus"], "train before balancing": counts["before"],
            **{f"{k}{' (after balancing)' if k == 'train' else ''}": v for k, v in counts["splits"].items()}}
    names = list(counts["corpus"])
    width = max(len(k) for k in rows) + 2
    lines = [" " * width + "".join(n[:10].rjust(11) for n in names) + "      total"]
    lines += [k.ljust(width) + "".join(str(v[n]).rjust(11) for n in names) + str(sum(v.values())).rjust(11)
              for k, v in rows.items()]
    return "\n".join(lines)


def write_results(out, cfg, model, fe, result: SERResult) -> None:
    """Every result file of the run in `out` (`cfg`: the run's SERConfig), metrics.json last."""
    names, counts = result.label_names, result.class_counts
    atomic_write(out / "model", lambda folder: save_classifier(model, fe, names, folder), replace_folder=True)
    write_text_csv(out / "history.csv", result.history, HISTORY_FIELDS)
    result.write_predictions(out)
    record = result.metrics()
    plot_curves(result.history, out / "curves.png", "speech emotion recognition")
    for k, pred in result.predictions().items():
        plot_confusion(confusion(result.label_ids[k], pred, len(names)), names,
                       out / f"confusion_matrix_{k}.png", f"{k} split, final model")
    plot_counts({"corpus as read": counts["corpus"], "train before balancing": counts["before"],
                 **{f"{k} (used)": v for k, v in counts["splits"].items()}},
                out / "class_distribution.png", f"clips per class (protocol {cfg.protocol.name})", "clips")
    plot_histograms({"clips": result.clip_seconds}, out / "clip_lengths.png", "seconds",
                    "clip lengths (all readable clips)")
    write_text(out / "report.txt", report(cfg, result, record))
    write_json(out / "metrics.json", record)  # last: marks the run finished


def report(cfg, result: SERResult, record: dict) -> str:
    """report.txt: per-epoch table, final figures, class counts and each split's classification report."""
    speed, capture, splits = record["speed"], result.graph_info, {"train": result.train, **result.final}
    lines = [f"Speech emotion recognition, model {cfg.model}, seed {cfg.seed}, {cfg.epochs} epochs",
             f"protocol: {result.protocol}", f"recipe: {result.recipe}",
             "train_loss/train_accuracy per epoch: running figures over the epoch's batches (dropout on); "
             "final train/val/test: the final model in eval mode; test is reported only, never used to choose. "
             "UAR: unweighted average recall, the mean of the per-class recalls.", "",
             epoch_table(result.history, ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                          "val_uar", "val_macro_f1", "test_accuracy", "test_uar", "seconds",
                                          "items_per_s"]), "",
             "final model: " + ", ".join(f"{k} accuracy {v['accuracy']:.4f}, UAR {v['uar']:.4f}, macro F1 "
                                         f"{v['macro_f1']:.4f}" for k, v in splits.items()),
             "final model on the test split: " + with_intervals(record["test"]),
             "per-class recall, test: " + ", ".join(
                 f"{n} {'n/a' if v['recall'] is None else format(v['recall'], '.4f')}"
                 for n, v in splits["test"]["per_class"].items())
             + (f" (n/a: absent from the test split, so undefined: {', '.join(splits['test']['absent'])}; UAR and "
                "macro F1 average the classes present)" if splits["test"]["absent"] else ""),
             f"best validation epoch {record['best_epoch']}: val accuracy {record['best']['val']['accuracy']:.4f}, "
             f"test accuracy {record['best']['test']['accuracy']:.4f}", "",
             "clips per class:", counts_table(result.class_counts),
             "items per split (augmented copies among them; speakers): " + ", ".join(
                 f"{k} {v['items']} ({v['augmented']}; {v['speakers'] or 'n/a'})" for k, v in result.split_items.items()),
             *(["the leak inside this test split (test accuracy, 95% bootstrap interval): " + "; ".join(
                 f"{name} {accuracy_over(g, 'items')}" for name, g in record["test_leak"].items())]
               if record.get("test_leak") else []), "",
             f"parameters: {result.params['trainable']:,} trainable of {result.params['total']:,}",
             f"training speed: {speed['items_per_s']} clips/s ({speed['audio_seconds_per_s']} audio-s/s) over "
             f"{speed['train_seconds']} s, {speed['items_per_s_steady']} clips/s without the "
             f"{speed['warmup_seconds']} s of warm-up (graph capture {capture['capture_seconds']} s, "
             f"{capture['graph_shapes']} shapes)",
             f"skipped files: {len(result.skipped_files)}" + "".join(f"\n  {s}" for s in result.skipped_files), ""]
    for k, pred in result.predictions().items():
        lines += [f"{k} split, final model:", report_text(result.label_ids[k], pred, result.label_names), ""]
    return "\n".join(lines)
