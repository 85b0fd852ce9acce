"""Result files with one schema for both tasks (docs/outputs.md): config.json, history.csv,
predictions.csv, metrics.json and report.txt's per-epoch table. A finished run's figures travel
as one `RunResult` (each task's subclass adds its fields: nli/report.py, ser/report.py)."""
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.files import write_json, write_text
from common.stats import RESAMPLES, interval_text, intervals

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "test_accuracy",
                  "seconds", "items_per_s", "warmup_seconds", "items_per_s_steady"]


def write_config(out: Path, args: dict, derived: dict, info: dict, fingerprint: dict | None = None) -> None:
    """Arguments as given (RunSpec.args), settings derived from them, versions and inputs' fingerprint."""
    write_json(out / "config.json", {"args": args, "derived": derived, "run_info": info, "inputs": fingerprint or {}})


def write_text_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    write_text(path, buf.getvalue())


def speed_record(history: list[dict], graph_info: dict) -> dict:
    """metrics.json's speed: training time and throughput over all epochs, with and without warm-up."""
    seconds, items, warm, warm_items = (sum(r[key] for r in history)
                                        for key in ("seconds", "items", "warmup_seconds", "warmup_items"))
    rec = {"train_seconds": round(seconds, 2), "items_per_s": round(items / seconds, 2) if seconds else None,
           "warmup_seconds": round(warm, 2), "warmup_items": warm_items,
           "items_per_s_steady": round((items - warm_items) / (seconds - warm), 2) if seconds > warm else None,
           "eval_seconds": round(sum(r.get("eval_seconds", 0.0) for r in history), 2), **graph_info}
    if any("audio_seconds" in r for r in history):
        audio, warm_audio = (sum(r.get(key, 0.0) for r in history) for key in ("audio_seconds", "warmup_audio"))
        rec.update(audio_seconds=round(audio, 1), warmup_audio_seconds=round(warm_audio, 1),
                   audio_seconds_per_s=round(audio / seconds, 2) if seconds else None,
                   audio_seconds_per_s_steady=round((audio - warm_audio) / (seconds - warm), 2)
                   if seconds > warm else None)
    return rec


def logged_like_trainer(step_losses: list[float], every: int) -> list[dict]:
    """The training loss as HF Trainer logs it with logging_steps=`every` (means since the last log)."""
    return [{"steps": f"{end - every + 1}-{end}", "loss": sum(step_losses[end - every:end]) / every}
            for end in range(every, len(step_losses) + 1, every)]


def summary_only(split: dict) -> dict:
    """A split's figures without its per-item predictions (kept for report.txt and the plots, not metrics.json)."""
    return {k: v for k, v in split.items() if k not in ("pred", "subsets")}


@dataclass
class RunResult:
    """A finished run's figures (`evals[i]`: epoch i+1's {"val": ..., "test": ...}). metrics.json's `train`, `val`
    and `test` describe the final model (as the study reported), `best` the first best epoch by validation accuracy."""
    task: str
    experiment: str
    seed: int
    protocol: str
    history: list[dict]
    evals: list[dict]
    params: dict
    graph_info: dict
    train: dict
    label_names: list
    label_ids: dict

    @property
    def final(self) -> dict:
        return self.evals[-1]

    @property
    def best_epoch(self) -> int:
        return max(range(len(self.evals)), key=lambda i: (self.evals[i]["val"]["accuracy"], -i)) + 1

    def task_metrics(self) -> dict:
        """The task's own keys of metrics.json (a subclass adds them)."""
        return {}

    def item_extras(self, split: str) -> list[dict]:
        """Per item of a split, the task's own columns of predictions.csv (a subclass adds them)."""
        return [{} for _ in self.label_ids[split]]

    def predictions(self) -> dict[str, np.ndarray]:
        """The final model's predicted label ids of each evaluated split."""
        splits = {"train": self.train, **self.final} if "pred" in self.train else self.final
        return {k: np.asarray(v["pred"]) for k, v in splits.items() if k in self.label_ids}

    def metrics(self) -> dict:
        """metrics.json (the test figures with their 95% bootstrap intervals)."""
        best = self.evals[self.best_epoch - 1]
        test = {**summary_only(self.final["test"]), "intervals": intervals(
            self.label_ids["test"], self.predictions()["test"], len(self.label_names))}
        return {"task": self.task, "experiment": self.experiment, "seed": self.seed, "protocol": self.protocol,
                "epochs": len(self.history), "best_epoch": self.best_epoch, "params": self.params,
                "speed": speed_record(self.history, self.graph_info), "train": summary_only(self.train),
                "val": summary_only(self.final["val"]), "test": test,
                "best": {"val": summary_only(best["val"]), "test": summary_only(best["test"])},
                **self.task_metrics()}

    def write_predictions(self, out: Path) -> None:
        """predictions.csv: split, item, true and predicted label, and the task's own columns."""
        rows = []
        for split, pred in self.predictions().items():
            for i, (t, p, extra) in enumerate(zip(self.label_ids[split], pred, self.item_extras(split))):
                rows.append({"split": split, "item": i, "true": self.label_names[int(t)],
                             "predicted": self.label_names[int(p)], **extra})
        fields = list(rows[0]) if rows else ["split", "item", "true", "predicted"]
        write_text_csv(out / "predictions.csv", rows, fields)


def with_intervals(split: dict) -> str:
    """"test accuracy 0.7100 [0.6800, 0.7400], UAR ..., macro F1 ...": figures with their intervals."""
    return ", ".join(f"{name} {split[k]:.4f} {interval_text(split['intervals'][k])}"
                     for k, name in (("accuracy", "test accuracy"), ("uar", "UAR"), ("macro_f1", "macro F1"))) + \
        f" (95% intervals: percentile bootstrap over the {sum(v['support'] for v in split['per_class'].values())} " \
        f"test items, {RESAMPLES:,} resamples)"


def accuracy_over(group: dict, unit: str) -> str:
    """"0.7100 [0.6800, 0.7400] over 120 clips" of {"items", "accuracy", "interval"}, or "no clips"."""
    if not group["items"]:
        return f"no {unit}"
    return f"{group['accuracy']:.4f} {interval_text(group['interval'])} over {group['items']} {unit}"


def epoch_table(history: list[dict], columns: list[str]) -> str:
    """The per-epoch table of report.txt, in fixed-width columns."""
    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4f}"
        return "n/a" if v is None else str(v)
    cells = [columns] + [[fmt(r.get(c)) for c in columns] for r in history]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
