"""The result files of one NLI run: model/, history.csv, plots, report.txt, then metrics.json,
written last because its presence marks the run finished (common/checkpoint.py)."""
import numpy as np

from common.files import atomic_write, write_json, write_text
from common.metrics import confusion, report_text
from common.plots import plot_confusion, plot_counts, plot_curves, plot_histograms
from common.results import epoch_table, metrics_record, write_history
from nli.data import LABELS
from nli.model import encoder_layers


def experiment_name(args) -> str:
    by = "-importance" if getattr(args, "prune_by", "random") == "importance" else ""
    parts = [f"keep{args.keep_layers}" if args.keep_layers else "",
             f"prune{args.prune_heads:g}{by}" if args.prune_heads else "", f"freeze{args.freeze}" if args.freeze else ""]
    return "-".join(p for p in parts if p) or "all"


def without_predictions(summary: dict) -> dict:
    """A split's summary without the per-pair predictions and subsets kept for the report."""
    return {k: v for k, v in summary.items() if k not in ("pred", "subsets")}


def write_results(out, args, model, tokenizer, history, evals, *, true, params, stats, piece_lengths, heads, scores,
                  recipe, graphs, label_counts) -> None:
    def save_model(folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    atomic_write(out / "model", save_model, replace_folder=True)  # (a resumed run may find its own model/)
    write_history(out, history)

    name = experiment_name(args)
    final = evals[-1]
    pred = np.asarray(final["test"]["pred"])
    subsets = final["test"].get("subsets") or dict.fromkeys(
        ["hard_hypothesis", "easy_hypothesis", "hard_overlap", "easy_overlap"])
    protocol = "FarsTail official splits; final-epoch model reported, test never used for selection"
    record = metrics_record(
        task="nli", experiment=name, seed=args.seed, protocol=protocol, epochs=args.epochs, history=history,
        evals=[{k: without_predictions(v) for k, v in e.items()} for e in evals], params=params,
        train={"loss": history[-1]["train_loss"]}, graphs=graphs, token_stats=stats, test_subsets=subsets,
        label_counts=label_counts)

    plot_curves(history, out / "curves.png", f"FarsTail, {name}")
    plot_confusion(confusion(true, pred, len(LABELS)), LABELS, out / "confusion_matrix.png", f"FarsTail test, {name}")
    plot_histograms(piece_lengths, out / "token_lengths.png", "word pieces (special tokens not counted)",
                    "FarsTail training split")
    plot_counts(label_counts, out / "label_counts.png", "FarsTail labels per split", "pairs")
    speed = record["speed"]
    lines = [f"FarsTail NLI, experiment {name}, seed {args.seed}, {args.epochs} epochs, model {args.model}",
             f"recipe: {recipe}",
             "train_loss: mean cross-entropy over the epoch's training batches (dropout on); val and test: the "
             "model after that epoch, in eval mode; test is reported only, never used to choose", "",
             epoch_table(history, ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1",
                                   "test_accuracy", "seconds", "items_per_s", "items_per_s_steady"]), "",
             f"final model: test loss {final['test']['loss']:.4f}, test accuracy {final['test']['accuracy']:.4f}, "
             f"macro F1 {final['test']['macro_f1']:.4f}",
             f"best validation epoch {record['best_epoch']}: val accuracy {record['best']['val']['accuracy']:.4f}, "
             f"test accuracy {record['best']['test']['accuracy']:.4f}",
             "test accuracy on FarsTail's subsets: " + ", ".join(
                 f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in subsets.items()),
             f"parameters: {params['trainable']:,} trainable of {params['total']:,}",
             f"training speed: {speed['items_per_s']} pairs/s over {speed['train_seconds']} s, "
             f"{speed['items_per_s_steady']} pairs/s without the {speed['warmup_seconds']} s of warm-up "
             f"(graph capture {graphs['capture_seconds']} s, {graphs['graph_shapes']} shapes)",
             "labels per split: " + "; ".join(f"{k} " + ", ".join(f"{n} {c}" for n, c in v.items())
                                              for k, v in label_counts.items()),
             f"training split: longest premise {stats['max_premise_tokens']}, longest hypothesis "
             f"{stats['max_hypothesis_tokens']} word pieces; {stats['truncated_pairs']} pairs truncated to "
             f"{args.max_length}", ""]
    if heads:
        n = sum(len(h) for h in heads.values())
        how = ("the lowest by gradient head importance on training batches of the starting model"
               if scores else f"drawn at random with seed {args.seed}")
        lines += [f"pruned heads: {n} of {model.config.num_attention_heads * len(encoder_layers(model))} removed, "
                  f"{how} (layer: heads) {heads}"]
        if scores:
            lines += ["head importance before fine-tuning (normalised within each layer; * removed):"]
            lines += [f"  layer {layer}: " + "  ".join(f"{h}:{v:.3f}{'*' if h in heads.get(layer, []) else ''}"
                                                    for h, v in row.items()) for layer, row in scores.items()]
        lines += ["note: the study masked 50% of attention weights at random instead, which removes no head and "
                  "saves no computation; these heads are removed structurally (smaller matrices), so the two "
                  "results are not the same experiment.", ""]
    lines += ["test split, final model:", report_text(true, pred, LABELS), ""]
    write_text(out / "report.txt", "\n".join(lines))
    write_json(out / "metrics.json", record)  # last: marks the run finished
