"""The result files of one NLI run: model/, history.csv, plots, report.txt, then metrics.json,
written last because its presence marks the run finished (common/checkpoint.py)."""
from dataclasses import dataclass, field

from common.files import atomic_write, write_json, write_text
from common.metrics import confusion, report_text
from common.plots import plot_confusion, plot_counts, plot_curves, plot_histograms
from common.results import HISTORY_FIELDS, RunResult, epoch_table, with_intervals, write_text_csv
from nli.data import LABEL_NAMES
from nli.model import Applied

PROTOCOL = "FarsTail official splits; final-epoch model reported, test never used for selection"
SUBSETS = ["hard_hypothesis", "easy_hypothesis", "hard_overlap", "easy_overlap"]


@dataclass
class NLIResult(RunResult):
    """A finished NLI run: the common figures, the data's statistics, what the experiment did, the hard-subset flags."""
    hard: dict = field(default_factory=dict)
    token_stats: dict = field(default_factory=dict)
    piece_lengths: dict = field(default_factory=dict)
    label_counts: dict = field(default_factory=dict)
    applied: Applied = field(default_factory=Applied)  # what the experiment did to the model
    heads_in_model: int = 0
    recipe: str = ""

    def task_metrics(self) -> dict:
        subsets = self.final["test"].get("subsets") or dict.fromkeys(SUBSETS)
        return {"token_stats": self.token_stats, "test_subsets": subsets, "label_counts": self.label_counts}

    def item_extras(self, split: str) -> list[dict]:
        if split != "test" or not self.hard:
            return super().item_extras(split)
        return [dict(zip(self.hard, flags)) for flags in zip(*self.hard.values())]


def write_results(out, cfg, model, tokenizer, result: NLIResult) -> None:
    """Every result file of the run in `out` (`cfg`: the run's NLIConfig), metrics.json last."""
    def save_model(folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    atomic_write(out / "model", save_model, replace_folder=True)  # (a resumed run may find its own model/)
    write_text_csv(out / "history.csv", result.history, HISTORY_FIELDS)
    result.write_predictions(out)
    record = result.metrics()
    plot_curves(result.history, out / "curves.png", f"FarsTail, {result.experiment}")
    plot_confusion(confusion(result.label_ids["test"], result.predictions()["test"], len(LABEL_NAMES)), LABEL_NAMES,
                   out / "confusion_matrix.png", f"FarsTail test, {result.experiment}")
    plot_histograms(result.piece_lengths, out / "token_lengths.png", "word pieces (special tokens not counted)",
                    "FarsTail training split")
    plot_counts(result.label_counts, out / "label_counts.png", "FarsTail labels per split", "pairs")
    write_text(out / "report.txt", report(cfg, result, record))
    write_json(out / "metrics.json", record)  # last: marks the run finished


def report(cfg, result: NLIResult, record: dict) -> str:
    """report.txt: the per-epoch table, the final figures and where each comes from."""
    speed, capture, final, stats = record["speed"], result.graph_info, result.final, result.token_stats
    lines = [f"FarsTail NLI, experiment {result.experiment}, seed {cfg.seed}, {cfg.epochs} epochs, model {cfg.model}",
             f"recipe: {result.recipe}",
             "train_loss: mean cross-entropy over the epoch's training batches (dropout on); val and test: the "
             "model after that epoch, in eval mode; test is reported only, never used to choose", "",
             epoch_table(result.history, [f for f in HISTORY_FIELDS if f != "warmup_seconds"]), "",
             f"final model: test loss {final['test']['loss']:.4f}, " + with_intervals(record["test"]),
             f"best validation epoch {record['best_epoch']}: val accuracy {record['best']['val']['accuracy']:.4f}, "
             f"test accuracy {record['best']['test']['accuracy']:.4f}",
             f"training loss as HF Trainer logs it (the mean of each {cfg.trainer_logging_steps} steps; the study's "
             "table shows the last value logged): " + (", ".join(
                 f"steps {w['steps']} {w['loss']:.4f}" for w in result.train["trainer_logged"]) or
                 f"none (the run has fewer than {cfg.trainer_logging_steps} steps)"),
             "test accuracy on FarsTail's subsets: " + ", ".join(
                 f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in record["test_subsets"].items()),
             f"parameters: {result.params['trainable']:,} trainable of {result.params['total']:,}",
             f"training speed: {speed['items_per_s']} pairs/s over {speed['train_seconds']} s, "
             f"{speed['items_per_s_steady']} pairs/s without the {speed['warmup_seconds']} s of warm-up "
             f"(graph capture {capture['capture_seconds']} s, {capture['graph_shapes']} shapes)",
             "labels per split: " + "; ".join(f"{k} " + ", ".join(f"{n} {c}" for n, c in v.items())
                                              for k, v in result.label_counts.items()),
             f"training split: longest premise {stats['max_premise_tokens']}, longest hypothesis "
             f"{stats['max_hypothesis_tokens']} word pieces; {stats['truncated_pairs']} pairs truncated to "
             f"{cfg.max_length}", ""]
    heads, scores, masked = result.applied.pruned_heads, result.applied.head_scores, result.applied.masked_weights
    if masked:
        lines += [f"masked weights (the study's method, torch.nn.utils.prune.random_unstructured): {masked['masked']:,} "
                  f"of {masked['entries']:,} entries ({masked['fraction']:.4f}) in the {masked['tensors']} parameters "
                  "whose names contain 'attention' and end in 'weight' (including attention.output.LayerNorm.weight, "
                  "reading the study's description literally), masked at random before training and kept at zero throughout; no head "
                  "is removed and no computation saved", ""]
    if heads:
        n = sum(len(h) for h in heads.values())
        how = ("the lowest by gradient head importance on training batches of the starting model"
               if scores else f"drawn at random with seed {cfg.seed}")
        lines += [f"pruned heads: {n} of {result.heads_in_model} removed, {how} (layer: heads) {heads}"]
        if scores:
            lines += ["head importance before fine-tuning (normalised within each layer; * removed):"]
            lines += [f"  layer {layer}: " + "  ".join(f"{h}:{v:.3f}{'*' if h in heads.get(layer, []) else ''}"
                                                    for h, v in row.items()) for layer, row in scores.items()]
        lines += ["note: the study masked 50% of attention weights at random instead, removing no head and saving no "
                  "computation; these heads are removed structurally (smaller matrices): not the same experiment.", ""]
    lines += ["test split, final model:", report_text(result.label_ids["test"], result.predictions()["test"],
                                                       LABEL_NAMES), ""]
    return "\n".join(lines)
