"""Fine-tune ParsBERT on FarsTail (Persian NLI), with the study's ablations.

    python -m nli.train --out runs/nli/all                      # all layers trained
    python -m nli.train --out runs/nli/freeze9 --freeze 9       # first 9 encoder layers frozen
    python -m nli.train --out runs/nli/keep9 --keep-layers 9    # only the first 9 layers kept
    python -m nli.train --out runs/nli/prune --prune-heads 0.5  # half the heads removed, at random
    python -m nli.train --out runs/nli/pi --prune-heads 0.5 --prune-by importance  # the least important half

The recipe is the study's (HF Trainer defaults): premise and hypothesis tokenised together and
truncated to --max-length 200, batch 16, 3 epochs, AdamW (lr 3e-5, no weight decay), learning
rate decaying linearly to zero over all steps with no warm-up, gradients clipped to norm 1.0.

- Batch: one optimizer step sees --batch-size × --grad-accum pairs. The sampler forms batches of
  that size from pairs of similar length and cuts each into micro-batches of --batch-size; each
  pair's loss is weighted 1 / (pairs in the optimizer batch), so accumulation gives the same
  update as one large batch (a short last batch too). Micro-batches are padded up to a multiple
  of 16 word pieces (a bucket), and a short one is filled with zero-weight rows: few shapes.
- Precision: --amp auto is bf16 autocast on CUDA (fp16 with a GradScaler where bf16 is missing)
  and fp32 on the CPU. Weights and optimizer state stay fp32; the loss is computed in fp32.
- Speed: on CUDA (--cuda-graphs auto) each bucket's forward/backward and the optimizer update
  are captured once as CUDA graphs and replayed (common/step.py); the CPU runs the same step
  function eagerly. No step reads the device; figures are read every --log-every steps.
- Ablations apply in one order: keep layers, then prune heads, then freeze. Heads to remove are
  drawn at random with the seed, or (--prune-by importance) are the lowest-scoring by gradient
  head importance on --importance-batches training batches of the starting model (nli/importance.py).
- Each epoch: train, then evaluate validation and test. Test is reported, never used to choose.
  The final model's figures are the headline (as in the study); metrics.json's `best` holds the
  epoch with the best validation accuracy.
- Each finished epoch writes a verified checkpoint; --resume continues from it and ends with the
  weights an uninterrupted run would have. metrics.json is written last and marks the run done.

Outputs in --out: config.json, train.log, steps.csv, history.csv, report.txt, curves.png,
confusion_matrix.png, token_lengths.png, model/, metrics.json (see README.md).
"""
import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from common.batching import LengthGroupedBatches, sorted_batches
from common.checkpoint import Checkpoint
from common.device import autocast, grad_scaler, precision_name
from common.distributed import distributed, my_micro_batches, sync_unless, wrap
from common.errors import RunFailed, user_errors
from common.metrics import summarize
from common.results import write_config
from common.inputs import model_record
from common.run import Run, check_flags, count_params, run_info
from common.step import Progress, Steps, TrainStep, follow_graph_mode, make_optimizer, set_lr, use_cuda_graphs
from nli.data import (LABELS, bucket_length, check_max_length, collate, encode, farstail_record, load_farstail,
                      load_tokenizer, token_stats)
from nli.importance import head_importance
from nli.model import apply_experiment, encoder_layers, load_classifier
from nli.report import experiment_name, write_results

EVAL_BATCH = 64  # pairs per evaluation batch; evaluation order is length-sorted and fixed
RESUME_FREE = {"resume", "overwrite", "device", "cuda_graphs", "log_every"}  # a resumed run may change these


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
    p.add_argument("--prune-heads", type=float, help="remove this fraction of all attention heads")
    p.add_argument("--prune-by", choices=["random", "importance"], default="random",
                   help="which heads --prune-heads removes: drawn at random with the seed, or the least important")
    p.add_argument("--importance-batches", type=int, default=32,
                   help="training batches (of --batch-size) that head importance is computed on")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto", help="autocast precision")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="replay each step from CUDA graphs (auto: on when the device is CUDA)")
    p.add_argument("--log-every", type=int, default=50, help="read loss, gradient norm and memory every N steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty --out first")
    args = p.parse_args(argv)
    check_flags(p, args, ("epochs", "batch_size", "grad_accum", "max_length", "limit", "keep_layers", "log_every",
                          "importance_batches"))
    if args.freeze < 0:
        p.error("--freeze must be 0 or more")
    if args.prune_heads is not None and not 0 < args.prune_heads < 1:  # (also refuses nan and 0)
        p.error(f"--prune-heads {args.prune_heads}: give a fraction of the heads between 0 and 1, like 0.5")
    if args.prune_by == "importance" and not args.prune_heads:
        p.error("--prune-by importance chooses the heads that --prune-heads removes; give --prune-heads too")
    return args


def main(argv=None):
    args = parse_args(argv)
    hf_logging.disable_progress_bar()  # our own bars only
    with user_errors(interrupted="interrupted; resume with --resume"):
        train(args)


def uses_sdpa(model) -> bool:
    model = getattr(model, "module", model)  # (under DDP)
    return model.config._attn_implementation == "sdpa"


def forward(model):
    """The task's model call on one batch of device tensors: BERT pair classification logits."""
    return lambda b: model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                           attention_mask=b["attention_mask"]).logits


def train_epoch(steps: Steps, ddp, d, data, batches, args, lr_at, first_step: int, progress: Progress) -> dict:
    """One pass over `batches`: set the step's learning rate, run this process's micro-batches
    (all of the batch in one process; its share under torchrun), update."""
    ddp.train()
    for n, batch in enumerate(batches):
        lr = lr_at(first_step + n)
        set_lr(steps.step.optimizer, lr)
        micros, rows = my_micro_batches(batch, args.batch_size, d)
        for j, idx in enumerate(micros):  # an empty share: zero-weight rows, for the all-reduce
            with sync_unless(ddp, j < len(micros) - 1):  # gradients add up; one all-reduce per step
                steps.micro(collate(data, idx or batch[:1], steps.step.device, rows=rows,
                                    weight=d.world / len(batch) if idx else 0.0, sdpa_mask=uses_sdpa(ddp)))
        steps.update()
        progress.step_done(len(batch), lr)
    return progress.finish()


@torch.inference_mode()
def predict_logits(model, data, device, dtype) -> tuple[np.ndarray, float]:
    """Logits for every pair (in the split's order) and the mean cross-entropy; batches in a fixed
    length-sorted order, padded to the same buckets as training."""
    model.eval()
    order, parts = [], []
    for idx in sorted_batches(data.lengths.tolist(), EVAL_BATCH):
        batch = collate(data, idx, device, sdpa_mask=uses_sdpa(model))
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, dtype):
            parts.append(forward(model)(b).float())
        order += idx
    logits = torch.empty(len(order), parts[0].shape[1])
    logits[order] = torch.cat(parts).cpu()
    return logits.numpy(), F.cross_entropy(logits, data.labels).item()


def evaluate(model, data, device, dtype, hard=None) -> dict:
    logits, loss = predict_logits(model, data, device, dtype)
    if not math.isfinite(loss):
        raise RunFailed("the evaluation loss is NaN or infinite; the run stopped and wrote no results")
    pred, true = logits.argmax(1), data.labels.numpy()
    out = summarize(true, pred, LABELS, loss)
    out["pred"] = pred.tolist()
    if hard:  # FarsTail's test columns: accuracy on each hard subset and its easy complement
        out["subsets"] = {f"{kind}_{name.split('_')[1]}": float((pred == true)[np.asarray(flags) == want].mean())
                          for name, flags in hard.items() for kind, want in (("hard", 1), ("easy", 0))}
    return out


def capture_examples(data, args, device, sdpa: bool) -> list[dict]:
    """One training micro-batch for every bucket a batch can be padded to (a pair of that bucket
    plus zero-weight rows), for graph capture."""
    lengths = data.lengths.tolist()
    first = {}
    for i, n in enumerate(lengths):
        first.setdefault(bucket_length(n, args.max_length), i)
    return [collate(data, [i], device, rows=args.batch_size, weight=0.0, sdpa_mask=sdpa) for _, i in sorted(first.items())]


def inputs(args) -> dict:
    """The fingerprint of what the run reads (config.json, checkpoints; common/inputs.py)."""
    return {"data": farstail_record(args.data_dir), "model": model_record(args.model)}


def train(args):
    with distributed(args.device) as d, Run(args, RESUME_FREE, d, program="nli.train", inputs=lambda: inputs(args),
                                            reads=(args.data_dir, args.model)) as run:
        if run.finished:  # (Run: torchrun; --out; device, precision, seeds)
            return
        log, device, dtype, out = run.log, run.device, run.dtype, args.out

        # 1. Data: read and check FarsTail, tokenise each split once.
        splits = load_farstail(args.data_dir, args.limit, log)
        tokenizer = load_tokenizer(args.model)
        check_max_length(args.max_length, tokenizer, None)
        stats, piece_lengths = token_stats(tokenizer, splits["train"], args.max_length)
        data = {name: encode(tokenizer, split, args.max_length) for name, split in splits.items()}
        log(f"FarsTail: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} pairs; longest premise "
            f"{stats['max_premise_tokens']} and hypothesis {stats['max_hypothesis_tokens']} word pieces; "
            f"{stats['truncated_pairs']} training pairs truncated to {args.max_length}")

        # 2. Model and the experiment: keep layers, then prune heads (at random or by importance), then freeze.
        model = load_classifier(args.model, LABELS).to(device)
        check_max_length(args.max_length, tokenizer, getattr(model.config, "max_position_embeddings", None))
        importance = None
        if args.prune_by == "importance":
            batches = LengthGroupedBatches(data["train"].lengths.tolist(), args.batch_size, args.seed).epoch(0)
            importance = lambda m: head_importance(m, data["train"], batches[:args.importance_batches],  # noqa: E731
                                                   device, dtype)
        heads, scores = apply_experiment(model, args.keep_layers, args.prune_heads, args.freeze, args.seed, importance)
        graphs, graphs_why = use_cuda_graphs(args.cuda_graphs, device, dtype, d)
        run.begin()  # inputs checked: only now is anything written into --out
        params = count_params(model)

        # 3. Optimizer over trainable parameters only (frozen layers get no state), linear decay.
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(trainable, args.lr, device, graphs)
        scaler = grad_scaler(device, dtype)
        sampler = LengthGroupedBatches(data["train"].lengths.tolist(), args.batch_size * args.grad_accum, args.seed)
        steps_per_epoch = len(sampler)
        total_steps = steps_per_epoch * args.epochs

        def lr_at(step: int) -> float:
            return args.lr * max(0.0, 1 - step / total_steps)

        read = inputs(args)
        ckpt = Checkpoint(args, RESUME_FREE, d, inputs=read, model=model, optimizer=opt, scaler=scaler)
        ddp = wrap(model, d, device, args.seed)  # DDP under torchrun (one RNG stream per process), else the model
        start, history, evals = ckpt.restore(log)
        follow_graph_mode(opt, graphs, device)  # (a checkpoint brings back the optimizer mode it was written in)
        step = TrainStep(forward(ddp), trainable, opt, scaler, device, dtype, clip=1.0)
        step.step_no.fill_((start - 1) * steps_per_epoch)
        steps = Steps(step)
        if graphs and start <= args.epochs:
            model.train()
            steps.capture(capture_examples(data["train"], args, device, uses_sdpa(model)), log)
        if d.main:
            write_config(out, args, {
                "experiment": experiment_name(args), "device": str(device), "precision": precision_name(dtype),
                "cuda_graphs": steps.status(graphs_why), "optimizer_batch": args.batch_size * args.grad_accum,
                "processes": d.world, "steps": total_steps, "pruned_heads": heads, "head_importance": scores,
                "layers": len(encoder_layers(model)), "params": params, "token_stats": stats,
                "pairs": {k: len(v) for k, v in splits.items()}}, run_info(device), read)
        log(f"{experiment_name(args)}: {params['trainable']:,} of {params['total']:,} parameters train; "
            f"{precision_name(dtype)} on {device}; batch {args.batch_size} x {args.grad_accum}"
            f"{f' over {d.world} processes' if d.active else ''}; {total_steps} steps; "
            f"CUDA graphs {steps.status(graphs_why)}")

        # 4. The loop: train an epoch, evaluate, checkpoint.
        for epoch in range(start, args.epochs + 1):
            progress = Progress(steps, epoch=epoch, first=epoch == start, batches=steps_per_epoch,
                                every=args.log_every, log=log, steps_csv=out / "steps.csv", d=d, unit="pairs")
            fig = train_epoch(steps, ddp, d, data["train"], sampler.epoch(epoch), args, lr_at,
                              (epoch - 1) * steps_per_epoch, progress)
            t0 = time.perf_counter()
            ev = {"val": evaluate(model, data["val"], device, dtype),
                  "test": evaluate(model, data["test"], device, dtype, splits["test"].hard)}
            fig["eval_seconds"] = time.perf_counter() - t0
            evals.append(ev)
            history.append({"epoch": epoch, "train_loss": fig["train_loss"], "val_loss": ev["val"]["loss"],
                            "val_accuracy": ev["val"]["accuracy"], "val_macro_f1": ev["val"]["macro_f1"],
                            "test_accuracy": ev["test"]["accuracy"],
                            **{k: fig[k] for k in ("seconds", "items_per_s", "warmup_seconds", "items_per_s_steady",
                                                   "items", "warmup_items", "eval_seconds")}})
            log(f"epoch {epoch}: train loss {fig['train_loss']:.4f}  val loss {ev['val']['loss']:.4f}  val acc "
                f"{ev['val']['accuracy']:.4f}  test acc {ev['test']['accuracy']:.4f}  ({fig['items_per_s']:.1f} pairs/s"
                + (f"; {fig['items_per_s_steady']:.1f} after warm-up" if fig["warmup_seconds"] else "") + ")")
            ckpt.save(epoch, history, evals)

        # 5. Results (rank 0), metrics.json last; then the checkpoints go.
        if not d.main:
            return
        recipe = (f"batch {args.batch_size} x {args.grad_accum} pairs, AdamW lr {args.lr:g} decaying linearly to 0, "
                  f"gradient norm clipped to 1.0, {precision_name(dtype)} on {device}, max length {args.max_length}, "
                  f"padding to multiples of 16 word pieces, CUDA graphs {'on' if steps.graphed else 'off'}")
        write_results(out, args, model, tokenizer, history, evals, true=data["test"].labels.numpy(), params=params,
                      stats=stats, piece_lengths=piece_lengths, heads=heads, scores=scores, recipe=recipe,
                      graphs=steps.info(),
                      label_counts={k: {n: int((v.labels == i).sum()) for i, n in enumerate(LABELS)}
                                    for k, v in data.items()})
        ckpt.remove()
        log(f"done: test accuracy {evals[-1]['test']['accuracy']:.4f}; results in {out}")


if __name__ == "__main__":
    main()
