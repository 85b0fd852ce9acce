"""The result files of one SER run: model/, history.csv, plots, report.txt, then metrics.json,
written last because its presence marks the run finished (common/checkpoint.py)."""
import numpy as np

from common.files import atomic_write, write_json, write_text
from common.metrics import confusion, report_text
from common.plots import plot_confusion, plot_counts, plot_curves, plot_histograms
from common.results import epoch_table, metrics_record, write_history
from ser.model import save_classifier

HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "val_uar",
                  "test_accuracy", "test_uar", "seconds", "items_per_s", "warmup_seconds", "items_per_s_steady"]


def without_predictions(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "pred"}


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


def write_results(out, args, model, fe, history, evals, final_train, *, ids, names, params, counts, skipped, protocol,
                  seconds, recipe, graphs, split_items) -> None:
    atomic_write(out / "model", lambda folder: save_classifier(model, fe, names, folder), replace_folder=True)
    write_history(out, history, HISTORY_FIELDS)
    record = metrics_record(
        task="ser", experiment=f"hubert-{args.protocol}" + (f"-{args.split}" if args.protocol != "study" else ""),
        seed=args.seed, protocol=protocol, epochs=args.epochs, history=history,
        evals=[{k: without_predictions(v) for k, v in e.items()} for e in evals], params=params,
        train=without_predictions(final_train), graphs=graphs, class_counts=counts, split_items=split_items,
        skipped_files=skipped)

    final = {"train": final_train, **evals[-1]}
    plot_curves(history, out / "curves.png", "speech emotion recognition")
    for k, ev in final.items():
        plot_confusion(confusion(ids[k].numpy(), np.asarray(ev["pred"]), len(names)), names,
                       out / f"confusion_matrix_{k}.png", f"{k} split, final model")
    plot_counts({"corpus as read": counts["corpus"], "train before balancing": counts["before"],
                 **{f"{k} (used)": v for k, v in counts["splits"].items()}},
                out / "class_distribution.png", f"clips per class ({args.protocol} protocol)", "clips")
    plot_histograms({"clips": seconds}, out / "clip_lengths.png", "seconds", "clip lengths (all readable clips)")
    speed = record["speed"]
    lines = [f"Speech emotion recognition, model {args.model}, seed {args.seed}, {args.epochs} epochs",
             f"protocol: {protocol}", f"recipe: {recipe}",
             "train_loss/train_accuracy per epoch: running figures over the epoch's batches (dropout on); "
             "final train/val/test: the final model in eval mode; test is reported only, never used to choose. "
             "UAR: unweighted average recall, the mean of the per-class recalls.", "",
             epoch_table(history, ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_uar",
                                   "val_macro_f1", "test_accuracy", "test_uar", "seconds", "items_per_s"]), "",
             "final model: " + ", ".join(f"{k} accuracy {v['accuracy']:.4f}, UAR {v['uar']:.4f}, macro F1 "
                                         f"{v['macro_f1']:.4f}" for k, v in final.items()),
             "per-class recall, test: " + ", ".join(f"{n} {v['recall']:.4f}"
                                                    for n, v in final["test"]["per_class"].items()),
             f"best validation epoch {record['best_epoch']}: val accuracy {record['best']['val']['accuracy']:.4f}, "
             f"test accuracy {record['best']['test']['accuracy']:.4f}", "",
             "clips per class:", counts_table(counts),
             "items per split (augmented copies among them): " + ", ".join(
                 f"{k} {v['items']} ({v['augmented']})" for k, v in split_items.items()), "",
             f"parameters: {params['trainable']:,} trainable of {params['total']:,}",
             f"training speed: {speed['items_per_s']} clips/s ({speed['audio_seconds_per_s']} audio-s/s) over "
             f"{speed['train_seconds']} s, {speed['items_per_s_steady']} clips/s without the "
             f"{speed['warmup_seconds']} s of warm-up (graph capture {graphs['capture_seconds']} s, "
             f"{graphs['graph_shapes']} shapes)",
             f"skipped files: {len(skipped)}" + "".join(f"\n  {s}" for s in skipped), ""]
    for k, ev in final.items():
        lines += [f"{k} split, final model:", report_text(ids[k].numpy(), np.asarray(ev["pred"]), names), ""]
    write_text(out / "report.txt", "\n".join(lines))
    write_json(out / "metrics.json", record)  # last: marks the run finished
