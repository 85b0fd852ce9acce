"""Fine-tune ParsBERT on FarsTail (Persian NLI), with the study's ablations.

    python -m nli.train --out runs/nli/all                      # all layers trained
    python -m nli.train --out runs/nli/freeze9 --freeze 9       # first 9 encoder layers frozen
    python -m nli.train --out runs/nli/keep9 --keep-layers 9    # only the first 9 layers kept
    python -m nli.train --out runs/nli/prune --prune-heads 0.5  # half the heads removed

The recipe is the study's (HF Trainer defaults): premise and hypothesis tokenised together and
truncated to --max-length 200, batch 16, 3 epochs, AdamW (lr 3e-5, no weight decay), learning
rate decaying linearly to zero over all steps with no warm-up, gradients clipped to norm 1.0.

- Batch: one optimizer step sees --batch-size × --grad-accum pairs. The sampler forms batches of
  that size from pairs of similar length and splits each into --grad-accum micro-batches; each
  micro-batch's summed loss is divided by the whole batch's size, so accumulation gives the same
  update as one large batch (a short last batch too). Padding is per micro-batch.
- Precision: --amp auto is bf16 autocast on CUDA (fp16 with a GradScaler where bf16 is missing)
  and fp32 on the CPU. Weights and optimizer state stay fp32; the loss is computed in fp32.
- Ablations apply in one order: keep layers, then prune heads, then freeze.
- Each epoch: train, then evaluate validation and test. Test is reported, never used to choose.
  The final model's figures are the headline (as in the study); metrics.json's `best` holds the
  epoch with the best validation accuracy.
- Each finished epoch replaces one checkpoint (written atomically); --resume continues from it
  and ends with the weights an uninterrupted run would have.

Outputs in --out: config.json, train.log, history.csv, metrics.json, report.txt, curves.png,
confusion_matrix.png, token_lengths.png, model/ (see README.md).
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from common.batching import LengthGroupedBatches, micro_batches, sorted_batches
from common.metrics import confusion, report_text, summarize
from common.plots import plot_confusion, plot_curves, plot_histograms
from common.results import epoch_table, metrics_record, write_config, write_history
from common.run import (Checkpoint, UserError, autocast, count_params, grad_scaler, precision_name, run_info,
                        start_run, user_errors, write_json)
from nli.data import LABELS, collate, encode, load_farstail, token_stats
from nli.model import choose_heads, encoder_layers, freeze_layers, keep_layers, load_classifier, prune_heads

EVAL_BATCH = 64  # pairs per evaluation batch; evaluation order is length-sorted and fixed
RESUME_FREE = {"resume", "overwrite", "device"}  # arguments a resumed run may change


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m nli.train", description="Fine-tune ParsBERT on FarsTail.")
    p.add_argument("--model", default="HooshvareLab/bert-fa-base-uncased", help="hub id or save_pretrained folder")
    p.add_argument("--data-dir", type=Path, default=Path("data/farstail"),
                   help="folder with Train-word.csv, Val-word.csv, Test-word.csv (downloaded if missing)")
    p.add_argument("--out", type=Path, default=Path("runs/nli/all"), help="output folder")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per micro-batch")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (linear decay to 0, no warm-up)")
    p.add_argument("--max-length", type=int, default=200, help="word pieces per pair, special tokens included")
    p.add_argument("--seed", type=int, default=0, help="fixes data order, dropout, head choice, initialisation")
    p.add_argument("--limit", type=int, help="keep the first N rows of each split (quick runs)")
    p.add_argument("--freeze", type=int, default=0, help="freeze the first N encoder layers")
    p.add_argument("--keep-layers", type=int, help="keep only the first N encoder layers")
    p.add_argument("--prune-heads", type=float, help="remove this fraction of all attention heads, chosen at random")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto", help="autocast precision")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty --out first")
    args = p.parse_args(argv)
    for flag in ("epochs", "batch_size", "grad_accum", "max_length", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    hf_logging.disable_progress_bar()  # our own bars only
    with user_errors():
        train(args)


def experiment_name(args) -> str:
    parts = [f"keep{args.keep_layers}" if args.keep_layers else "",
             f"prune{args.prune_heads:g}" if args.prune_heads else "", f"freeze{args.freeze}" if args.freeze else ""]
    return "-".join(p for p in parts if p) or "all"


def uses_sdpa(model) -> bool:
    return model.config._attn_implementation == "sdpa"


def train_epoch(model, data, batches, opt, sched, scaler, args, device, dtype, pad_id, desc) -> tuple[float, float]:
    """One pass over `batches`; returns (mean training loss, seconds). No host sync per step: the
    loss is summed on the device and read every 25 steps for the progress bar."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum, seen, start = torch.zeros((), device=device), 0, time.perf_counter()
    bar = tqdm(batches, desc=desc, unit="batch", dynamic_ncols=True)
    for step, batch in enumerate(bar, 1):
        for micro in micro_batches(batch, args.grad_accum):
            inputs = collate(data, micro, pad_id, device, uses_sdpa(model))
            labels = inputs.pop("labels")
            with autocast(device, dtype):
                logits = model(**inputs).logits
            # weighted by the micro-batch's share of the batch: K micro-steps = one step of B×K
            loss = F.cross_entropy(logits.float(), labels, reduction="sum") / len(batch)
            scaler.scale(loss).backward()
            loss_sum += loss.detach() * len(batch)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        seen += len(batch)
        if step % 25 == 0 or step == len(batches):
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", pairs_s=f"{seen / (time.perf_counter() - start):.1f}")
    bar.close()
    return loss_sum.item() / seen, time.perf_counter() - start


@torch.inference_mode()
def predict_logits(model, data, device, dtype, pad_id) -> tuple[np.ndarray, float]:
    """Logits for every pair (in the split's order) and the mean cross-entropy."""
    model.eval()
    order, chunks = [], []
    for idx in sorted_batches(data.lengths, EVAL_BATCH):
        inputs = collate(data, idx, pad_id, device, uses_sdpa(model))
        inputs.pop("labels")
        with autocast(device, dtype):
            chunks.append(model(**inputs).logits.float())
        order += idx
    logits = torch.empty(len(order), chunks[0].shape[1])
    logits[order] = torch.cat(chunks).cpu()
    return logits.numpy(), F.cross_entropy(logits, data.labels).item()


def evaluate(model, data, device, dtype, pad_id, hard=None) -> dict:
    logits, loss = predict_logits(model, data, device, dtype, pad_id)
    pred, true = logits.argmax(1), data.labels.numpy()
    out = summarize(true, pred, LABELS, loss)
    out["pred"] = pred.tolist()
    if hard:  # FarsTail's test columns: accuracy on each hard subset and its easy complement
        out["subsets"] = {f"{kind}_{name.split('_')[1]}": float((pred == true)[np.asarray(flags) == want].mean())
                          for name, flags in hard.items() for kind, want in (("hard", 1), ("easy", 0))}
    return out


def train(args):
    started = start_run(args, RESUME_FREE)  # --out, train.log, device, precision, seeds
    if started is None:
        return
    log, device, dtype = started
    out = args.out

    # 1. Data: read and check FarsTail, tokenise each split once.
    splits = load_farstail(args.data_dir, args.limit, log)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as e:
        raise UserError(f"--model {args.model}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    stats, piece_lengths = token_stats(tokenizer, splits["train"], args.max_length)
    data = {name: encode(tokenizer, split, args.max_length) for name, split in splits.items()}
    log(f"FarsTail: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} pairs; longest premise "
        f"{stats['max_premise_tokens']} and hypothesis {stats['max_hypothesis_tokens']} word pieces; "
        f"{stats['truncated_pairs']} training pairs truncated to {args.max_length}")

    # 2. Model and the experiment: keep layers, then prune heads, then freeze.
    model = load_classifier(args.model, LABELS)
    if args.keep_layers:
        keep_layers(model, args.keep_layers)
    heads = {}
    if args.prune_heads:
        heads = choose_heads(len(encoder_layers(model)), model.config.num_attention_heads, args.prune_heads, args.seed)
        prune_heads(model, heads)
    freeze_layers(model, args.freeze)
    model.to(device)
    params = count_params(model)

    # 3. Optimizer over trainable parameters only (frozen layers get no state), linear decay.
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0, fused=device.type == "cuda")
    sampler = LengthGroupedBatches(data["train"].lengths, args.batch_size * args.grad_accum, args.seed)
    total_steps = len(sampler) * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total_steps))
    scaler = grad_scaler(device, dtype)

    ckpt = Checkpoint(args, RESUME_FREE, model=model, optimizer=opt, scheduler=sched, scaler=scaler)
    start, history, evals = ckpt.restore(log)
    write_config(out, args, {
        "experiment": experiment_name(args), "device": str(device), "precision": precision_name(dtype),
        "optimizer_batch": args.batch_size * args.grad_accum, "steps": total_steps, "pruned_heads": heads,
        "layers": len(encoder_layers(model)), "params": params, "token_stats": stats,
        "pairs": {k: len(v) for k, v in splits.items()}}, run_info(device))
    log(f"{experiment_name(args)}: {params['trainable']:,} of {params['total']:,} parameters train; "
        f"{precision_name(dtype)} on {device}; batch {args.batch_size} x {args.grad_accum}; {total_steps} steps")

    # 4. The loop: train an epoch, evaluate, checkpoint.
    pad_id = tokenizer.pad_token_id or 0
    for epoch in range(start, args.epochs + 1):
        train_loss, seconds = train_epoch(model, data["train"], sampler.epoch(epoch), opt, sched, scaler, args,
                                          device, dtype, pad_id, f"epoch {epoch}/{args.epochs}")
        ev = {"val": evaluate(model, data["val"], device, dtype, pad_id),
              "test": evaluate(model, data["test"], device, dtype, pad_id, splits["test"].hard)}
        evals.append(ev)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": ev["val"]["loss"],
                        "val_accuracy": ev["val"]["accuracy"], "val_macro_f1": ev["val"]["macro_f1"],
                        "test_accuracy": ev["test"]["accuracy"], "seconds": seconds,
                        "items_per_s": len(data["train"]) / seconds})
        log(f"epoch {epoch}: train loss {train_loss:.4f}  val loss {ev['val']['loss']:.4f}  val acc "
            f"{ev['val']['accuracy']:.4f}  test acc {ev['test']['accuracy']:.4f}  ({len(data['train']) / seconds:.1f} pairs/s)")
        ckpt.save(epoch, history, evals)

    # 5. Results.
    recipe = (f"batch {args.batch_size} x {args.grad_accum} pairs, AdamW lr {args.lr:g} decaying linearly to 0, "
              f"{precision_name(dtype)} on {device}, max length {args.max_length}")
    write_results(out, args, model, tokenizer, history, evals, params, stats, piece_lengths, heads,
                  data["test"].labels.numpy(), recipe)
    ckpt.remove()
    log(f"done: test accuracy {evals[-1]['test']['accuracy']:.4f}; results in {out}")


def figures(summary: dict) -> dict:
    """A split's summary without the per-pair predictions and subsets kept for the report."""
    return {k: v for k, v in summary.items() if k not in ("pred", "subsets")}


def write_results(out, args, model, tokenizer, history, evals, params, stats, piece_lengths, heads, true, recipe):
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    write_history(out, history)
    subsets = evals[-1]["test"].get("subsets") or dict.fromkeys(
        ["hard_hypothesis", "easy_hypothesis", "hard_overlap", "easy_overlap"])
    protocol = "FarsTail official splits; final-epoch model reported, test never used for selection"
    record = metrics_record(
        task="nli", experiment=experiment_name(args), seed=args.seed, protocol=protocol, epochs=args.epochs,
        history=history, evals=[{k: figures(v) for k, v in e.items()} for e in evals],
        params=params, train={"loss": history[-1]["train_loss"]}, token_stats=stats, test_subsets=subsets)
    write_json(out / "metrics.json", record)

    pred = np.asarray(evals[-1]["test"]["pred"])
    final = evals[-1]
    cm = confusion(true, pred, len(LABELS))
    name = experiment_name(args)
    plot_curves(history, out / "curves.png", f"FarsTail, {name}")
    plot_confusion(cm, LABELS, out / "confusion_matrix.png", f"FarsTail test, {name}")
    plot_histograms(piece_lengths, out / "token_lengths.png", "word pieces (special tokens not counted)",
                    "FarsTail training split")
    lines = [f"FarsTail NLI, experiment {name}, seed {args.seed}, {args.epochs} epochs, model {args.model}",
             f"recipe: {recipe}",
             "train_loss: mean cross-entropy over the epoch's training batches (dropout on); val and test: the "
             "model after that epoch, in eval mode; test is reported only, never used to choose", "",
             epoch_table(history, ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1",
                                   "test_accuracy", "seconds", "items_per_s"]), "",
             f"final model: test loss {final['test']['loss']:.4f}, test accuracy {final['test']['accuracy']:.4f}, "
             f"macro F1 {final['test']['macro_f1']:.4f}",
             f"best validation epoch {record['best_epoch']}: val accuracy {record['best']['val']['accuracy']:.4f}, "
             f"test accuracy {record['best']['test']['accuracy']:.4f}",
             "test accuracy on FarsTail's subsets: " + ", ".join(
                 f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in subsets.items()),
             f"parameters: {params['trainable']:,} trainable of {params['total']:,}",
             f"training split: longest premise {stats['max_premise_tokens']}, longest hypothesis "
             f"{stats['max_hypothesis_tokens']} word pieces; {stats['truncated_pairs']} pairs truncated to "
             f"{args.max_length}", ""]
    if heads:
        n = sum(len(h) for h in heads.values())
        lines += [f"pruned heads: {n} of {model.config.num_attention_heads * len(encoder_layers(model))} removed "
                  f"(layer: heads) {heads}",
                  "note: the study masked 50% of attention weights at random instead, which removes no head and "
                  "saves no computation; these heads are removed structurally (smaller matrices), so the two "
                  "results are not the same experiment.", ""]
    lines += ["test split, final model:", report_text(true, pred, LABELS), ""]
    (out / "report.txt").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
