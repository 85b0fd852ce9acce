"""How many attention heads a fine-tuned NLI model can lose, with no retraining: accuracy as heads
are removed by importance (nli/importance.py) and at random (docs/nli.md, "The curve").

    python -m nli.prune_curve --model runs/nli/all/seed0/model [--fractions 0.1,0.2,...,0.9]
        [--seeds 3] [--iterative] [--data-dir DIR] [--limit N] [--out DIR]

For each fraction f, round(f × heads) heads go from a copy of the model (never a layer's last head); the head
budget (chosen on validation only) and the outputs: docs/nli.md, "The curve"."""
import argparse
import copy
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from transformers.utils import logging as hf_logging

from common.batching import LengthGroupedBatches
from common.errors import UserError, user_errors
from common.inputs import model_record
from common.outdir import model_of_run
from common.files import write_json, write_text
from common.plots import plt, save
from common.results import write_config, write_text_csv
from common.run import Run, count_params, run_info
from common.spec import RunFlags, add_run_flags, check_flags, recorded_arg, run_spec
from nli.data import LABEL_NAMES, encode, farstail_record, load_farstail, load_tokenizer
from nli.evaluate import pair_logits
from nli.importance import head_importance, remaining_heads
from nli.model import choose_by_importance, encoder_layers, load_classifier, prune_heads

DROP = 0.01  # the head budget: validation accuracy may fall this much (one point) below the whole model's
FIELDS = ["method", "seed", "fraction", "heads_removed", "val_accuracy", "test_accuracy", "params", "pairs_per_s"]


@dataclass(frozen=True)
class CurveConfig(RunFlags):
    """Every setting of a pruning curve, built once from the command line."""
    model: Path = Path(".")  # model/ folder of a fine-tuned nli.train run (or the run folder)
    data_dir: Path = Path("data/farstail")
    limit: int | None = None  # keep the first N rows of each split
    out: Path | None = None  # default: prune_curve/ beside the model folder
    fractions: str = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"  # of the heads to remove, comma-separated
    seeds: int = 3  # random choices per fraction (seeds 0 … N-1)
    iterative: bool = False  # also recompute importance after each step of removal
    importance_batches: int = 32  # training batches importance is computed on
    batch_size: int = 16  # pairs per importance batch
    max_length: int | None = None  # word pieces per pair; default: the run's own (its config.json), else 200
    seed: int = 0  # which training batches importance is computed on
    cuda_graphs: str = "off"  # (inference only: nothing to capture)

    @property
    def points(self) -> list[float]:
        return sorted({float(f) for f in self.fractions.split(",") if f.strip()})

    def record(self) -> dict:
        return asdict(self)


def parse_args(argv=None) -> CurveConfig:
    d = CurveConfig()
    p = argparse.ArgumentParser(prog="python -m nli.prune_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True,
                   help="model/ folder of a fine-tuned nli.train run (or the run folder)")
    p.add_argument("--data-dir", type=Path, default=d.data_dir, help="FarsTail folder, as in nli.train")
    p.add_argument("--limit", type=int, help="keep the first N rows of each split (quick runs)")
    p.add_argument("--out", type=Path, help="output folder (default: prune_curve/ beside the model folder)")
    p.add_argument("--fractions", default=d.fractions, help="comma-separated fractions of the heads to remove")
    p.add_argument("--seeds", type=int, default=d.seeds, help="random choices per fraction (seeds 0 … N-1)")
    p.add_argument("--iterative", action="store_true", help="also recompute importance after each step of removal")
    p.add_argument("--importance-batches", type=int, default=d.importance_batches,
                   help="training batches importance is computed on")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per importance batch")
    p.add_argument("--max-length", type=int, help="word pieces per pair (default: the run's own, else 200)")
    p.add_argument("--seed", type=int, default=d.seed, help="fixes which training batches importance is computed on")
    add_run_flags(p, ("amp", "device", "resume", "overwrite"))
    a = p.parse_args(argv)
    try:
        given = CurveConfig(fractions=a.fractions).points
    except ValueError:
        p.error(f"--fractions {a.fractions}: give comma-separated numbers, like 0.1,0.5")
    if not given or not all(0 < f < 1 for f in given):
        p.error("--fractions: each must lie between 0 and 1")
    check_flags(p, {k: getattr(a, k) for k in ("seeds", "importance_batches", "batch_size", "limit", "max_length")})
    return CurveConfig(**vars(a))


def random_scores(model, seed: int) -> dict[int, dict[int, float]]:
    """Scores drawn uniformly at random with `seed`: choosing the lowest is choosing at random."""
    rng = random.Random(seed)
    return {layer: {h: rng.random() for h in remaining_heads(model, layer)}
            for layer in range(len(encoder_layers(model)))}


def measure(base, heads: dict, data: dict, device, dtype) -> dict:
    """Remove `heads` from a copy of base; its val/test accuracy, parameters and eval pairs/s."""
    model = copy.deepcopy(base)
    prune_heads(model, heads)
    out = {"heads_removed": sum(len(h) for h in heads.values()), "params": count_params(model)["total"]}
    start, pairs = time.perf_counter(), 0
    for split in ("val", "test"):
        pred = pair_logits(model, data[split], device, dtype).argmax(1).numpy()
        out[f"{split}_accuracy"] = float((pred == data[split].label_ids.numpy()).mean())
        pairs += len(data[split])
    out["pairs_per_s"] = round(pairs / (time.perf_counter() - start), 1)  # (pair_logits ends on the host)
    return out


def plot_prune_curve(rows: list[dict], whole: float, path: Path, title: str) -> None:
    """Test accuracy against the fraction of heads removed, by method (random: mean, min-max band)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, style in (("importance", "o-"), ("importance-iterative", "s--")):
        pts = by_fraction(rows, method)
        if pts:
            ax.plot([0, *pts], [whole] + [rs[0]["test_accuracy"] for rs in pts.values()], style, label=method)
    random_rows = by_fraction(rows, "random")
    if random_rows:
        fs, acc = [0, *random_rows], [[whole]] + [[r["test_accuracy"] for r in rs] for rs in random_rows.values()]
        ax.plot(fs, [float(np.mean(a)) for a in acc], "^-", color="tab:gray", label="random (mean)")
        ax.fill_between(fs, [min(a) for a in acc], [max(a) for a in acc], color="tab:gray", alpha=0.2,
                        label="random (min-max over seeds)")
    ax.axhline(whole, color="tab:red", ls=":", label="whole model")
    ax.axhline(whole - DROP, color="tab:red", ls=":", alpha=0.4, label="one point below")
    ax.set(xlabel="fraction of attention heads removed (no retraining)", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def plot_head_importance(scores: dict, layers: int, heads: int, path: Path) -> None:
    """Layers × heads heat map of importance (normalised within each layer); removed heads blank."""
    grid = np.full((layers, heads), np.nan)
    for layer, row in scores.items():
        grid[layer, list(row)] = list(row.values())
    fig, ax = plt.subplots(figsize=(0.5 * heads + 2.5, 0.4 * layers + 1.8))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="importance (normalised per layer)")
    ax.set(xlabel="head", ylabel="layer", title="head importance of the fine-tuned model",
           xticks=range(heads), yticks=range(layers))
    fig.tight_layout()
    save(fig, path)


def by_fraction(rows: list[dict], method: str) -> dict[float, list[dict]]:
    """One method's rows by fraction (`rows` come in increasing fraction)."""
    fractions = dict.fromkeys(r["fraction"] for r in rows if r["method"] == method)
    return {f: [r for r in rows if r["method"] == method and r["fraction"] == f] for f in fractions}


def budget(rows: list[dict], whole: dict) -> dict:
    """The most heads removed before validation accuracy first falls DROP below `whole`'s, and the accuracies there."""
    ok = {"heads_removed": 0, "fraction": 0.0, **whole}
    for r in sorted(rows, key=lambda r: r["fraction"]):
        if r["val_accuracy"] < whole["val_accuracy"] - DROP:
            break
        ok = r
    return {"heads": ok["heads_removed"], **{k: ok[k] for k in ("fraction", "val_accuracy", "test_accuracy")}}


def main(argv=None):
    cfg = parse_args(argv)
    hf_logging.disable_progress_bar()
    with user_errors():
        model = model_of_run(cfg.model, "nli.train")  # a one-line error if it is not a trained model
        curve(replace(cfg, model=model, out=cfg.out or model.parent / "prune_curve",
                      max_length=cfg.max_length or recorded_arg(model.parent, "max_length") or 200))


def curve(cfg: CurveConfig):
    fingerprint = lambda: {"data": farstail_record(cfg.data_dir), "model": model_record(str(cfg.model))}  # noqa: E731
    spec = run_spec("nli.prune_curve", cfg, frozenset({"resume", "overwrite", "device"}))
    with Run(spec, fingerprint=fingerprint, reads=(cfg.data_dir, cfg.model)) as run:
        if run.finished:
            return
        log, device, dtype, out = run.log, run.device, run.dtype, cfg.out
        base = load_classifier(str(cfg.model)).to(device).eval()
        if [base.config.id2label[i] for i in range(base.config.num_labels)] != LABEL_NAMES:
            raise UserError(f"--model {cfg.model}: its labels are not FarsTail's {', '.join(LABEL_NAMES)}")
        splits = load_farstail(cfg.data_dir, cfg.limit, log)
        tokenizer = load_tokenizer(str(cfg.model))
        alone = bool(getattr(base.config, "hypothesis_only", False))  # (nli.train --hypothesis-only: no premise)
        data = {k: encode(tokenizer, v, cfg.max_length, alone) for k, v in splits.items()}
        layers = len(encoder_layers(base))
        total = sum(len(remaining_heads(base, i)) for i in range(layers))
        batches = LengthGroupedBatches(data["train"].lengths.tolist(), cfg.batch_size, cfg.seed).epoch(0)
        batches = batches[:cfg.importance_batches]
        importance = lambda model: head_importance(model, data["train"], batches, device, dtype)  # noqa: E731
        run.begin()
        write_config(out, spec.args, {"heads": total, "layers": layers, "device": str(device), "hypothesis_only": alone,
                                      "importance_pairs": sum(map(len, batches))}, run_info(device), fingerprint())
        log(f"{cfg.model}: {layers} layers, {total} heads; importance on {sum(map(len, batches))} training pairs"
            + ("; trained without the premise, so fed the hypothesis alone" if alone else ""))

        scores = importance(base)
        whole = measure(base, {}, data, device, dtype)
        rows = [{"method": "none", "seed": "", "fraction": 0.0, **whole}]
        log(f"whole model: val {whole['val_accuracy']:.4f}, test {whole['test_accuracy']:.4f}")
        iterative_heads: dict[int, list[int]] = {}
        for f in cfg.points:
            n = round(f * total)
            if n > total - layers:
                log(f"fraction {f:g} would leave a layer without heads ({n} of {total}); skipped")
                continue
            chosen = [("importance", "", choose_by_importance(scores, n))]
            if cfg.iterative:
                current = copy.deepcopy(base)
                prune_heads(current, iterative_heads)
                more = n - sum(len(h) for h in iterative_heads.values())
                if more > 0:
                    for layer, hs in choose_by_importance(importance(current), more).items():
                        iterative_heads[layer] = sorted(iterative_heads.get(layer, []) + hs)
                chosen.append(("importance-iterative", "", iterative_heads))
            chosen += [("random", k, choose_by_importance(random_scores(base, k), n)) for k in range(cfg.seeds)]
            rows += [{"method": method, "seed": seed, "fraction": f, **measure(base, heads, data, device, dtype)}
                     for method, seed, heads in chosen]
            log(f"fraction {f:g} ({n} heads): " + ", ".join(
                f"{r['method']}{'' if r['seed'] == '' else ' ' + str(r['seed'])} test {r['test_accuracy']:.4f}"
                for r in rows if r["fraction"] == f))
        write_curve(out, cfg, rows, scores, whole, total, layers, base.config.num_attention_heads, alone)
        log(f"done: results in {out}")


def write_curve(out, cfg, rows, scores, whole, total, layers, per_layer, alone: bool) -> None:
    methods = [m for m in ("importance", "importance-iterative", "random") if any(r["method"] == m for r in rows)]
    mean_random = [{"fraction": f, "heads_removed": rs[0]["heads_removed"],
                    **{k: float(np.mean([r[k] for r in rs])) for k in ("val_accuracy", "test_accuracy")}}
                   for f, rs in by_fraction(rows, "random").items()]
    budgets = {m: budget(mean_random if m == "random" else [r for r in rows if r["method"] == m], whole)
               for m in methods}
    write_text_csv(out / "prune_curve.csv", rows, FIELDS)
    plot_prune_curve(rows, whole["test_accuracy"], out / "prune_curve.png",
                     f"heads removed without retraining ({total} heads)")
    plot_head_importance(scores, layers, per_layer, out / "head_importance.png")
    lines = [f"Pruning curve of {cfg.model}: heads removed without retraining; {total} heads in {layers} layers"
             + ("; the model was trained without the premise and is fed the hypothesis alone" if alone else ""),
             "importance: gradient head importance (Michel et al. 2019) on training pairs, never the test split; "
             "random: heads drawn at random, seeds 0.." + str(cfg.seeds - 1), "",
             "method                 seed  fraction  heads  val acc   test acc  params      pairs/s"]
    lines += [f"{r['method']:<22} {str(r['seed']):>4}  {r['fraction']:8.2f}  {r['heads_removed']:5d}  "
              f"{r['val_accuracy']:.4f}    {r['test_accuracy']:.4f}    {r['params']:<10,}  {r['pairs_per_s']}"
              for r in rows]
    lines += ["", f"head budget, chosen on validation (heads removed before validation accuracy falls more than "
                  f"{100 * DROP:g} point below the whole model's {whole['val_accuracy']:.4f}), and test accuracy there "
                  f"(the whole model's: {whole['test_accuracy']:.4f}):"]
    lines += [f"  {m}: {b['heads']} of {total} heads ({b['fraction']:g}): val {b['val_accuracy']:.4f}, test "
              f"{b['test_accuracy']:.4f}" + (" (mean over seeds)" if m == "random" else "") for m, b in budgets.items()]
    write_text(out / "report.txt", "\n".join(lines) + "\n")
    write_json(out / "metrics.json", {"task": "nli", "experiment": "prune-curve", "heads": total, "layers": layers,
                                      "whole": whole, "head_budget": budgets, "points": rows, "importance": scores})


if __name__ == "__main__":
    main()
