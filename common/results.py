"""Result files with one schema for both tasks: config.json, history.csv, metrics.json and the
per-epoch table of report.txt (DESIGN.md, "Command line and outputs"). Every file is written
atomically (common.files); metrics.json is written last by each loop and marks the run finished."""
import csv
import io
import math
from pathlib import Path

from common.checkpoint import args_record
from common.files import atomic_write, write_json

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "test_accuracy",
                  "seconds", "items_per_s", "warmup_seconds", "items_per_s_steady"]


def write_config(out: Path, args, derived: dict, info: dict, inputs: dict | None = None) -> None:
    """Arguments as given (paths resolved), settings derived from them, versions / git commit, and
    the fingerprint of every input file (common/inputs.py)."""
    write_json(out / "config.json", {"args": args_record(args), "derived": derived, "run_info": info,
                                     "inputs": inputs or {}})


def csv_text(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def write_history(out: Path, rows: list[dict], fields: list[str] = HISTORY_FIELDS) -> None:
    text = csv_text(rows, fields)
    atomic_write(out / "history.csv", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def speed_record(history: list[dict], graphs: dict) -> dict:
    """Training time and throughput over all epochs of the run, with and without warm-up
    (graph capture and the first steps of each process); evaluation seconds apart; for audio, the
    same in audio-seconds per second."""
    seconds = sum(r["seconds"] for r in history)
    items = sum(r["items"] for r in history)
    warm = sum(r["warmup_seconds"] for r in history)
    warm_items = sum(r["warmup_items"] for r in history)
    rec = {"train_seconds": round(seconds, 2), "items_per_s": round(items / seconds, 2) if seconds else None,
           "warmup_seconds": round(warm, 2), "warmup_items": warm_items,
           "items_per_s_steady": round((items - warm_items) / (seconds - warm), 2) if seconds > warm else None,
           "eval_seconds": round(sum(r.get("eval_seconds", 0.0) for r in history), 2), **graphs}
    if any("audio_seconds" in r for r in history):
        audio = sum(r.get("audio_seconds", 0.0) for r in history)
        warm_audio = sum(r.get("warmup_audio", 0.0) for r in history)
        rec.update(audio_seconds=round(audio, 1), warmup_audio_seconds=round(warm_audio, 1),
                   audio_seconds_per_s=round(audio / seconds, 2) if seconds else None,
                   audio_seconds_per_s_steady=round((audio - warm_audio) / (seconds - warm), 2)
                   if seconds > warm else None)
    return rec


def metrics_record(*, task: str, experiment: str, seed: int, protocol: str, epochs: int, history: list[dict],
                   evals: list[dict], params: dict, train: dict, graphs: dict, **extras) -> dict:
    """metrics.json. `evals[i]` holds epoch i+1's {"val": summary, "test": summary}; `train`, `val`
    and `test` describe the final model (as the study reported), `best` the epoch with the highest
    validation accuracy (the first such epoch on a tie)."""
    best_i = max(range(len(evals)), key=lambda i: (evals[i]["val"]["accuracy"], -i))
    rec = {"task": task, "experiment": experiment, "seed": seed, "protocol": protocol, "epochs": epochs,
           "best_epoch": best_i + 1, "params": params, "speed": speed_record(history, graphs),
           "train": train, "val": evals[-1]["val"], "test": evals[-1]["test"],
           "best": {"val": evals[best_i]["val"], "test": evals[best_i]["test"]}}
    rec.update(extras)
    return rec


def epoch_table(history: list[dict], columns: list[str]) -> str:
    """The per-epoch table of report.txt, one row per epoch, in fixed-width columns."""
    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4f}"
        return "n/a" if v is None else str(v)
    cells = [columns] + [[fmt(r.get(c)) for c in columns] for r in history]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
