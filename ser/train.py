"""Speech emotion recognition: fine-tune HuBERT on ShEMO (or any manifest-listed corpus).

    python -m ser.train --data-dir path/to/shemo --out runs/ser/seed0
    python -m ser.train --manifest ../shared/data/emodb/manifest.csv --split speaker --out runs/emodb

The recipe is the study's: 16 kHz audio, HuBERT → mean over time → Linear(hidden, C) →
Linear(C, C), batch 2, 5 epochs, AdamW (lr 5e-6, no weight decay, constant learning rate),
cross-entropy. The protocol is not: the data are split first (stratified 80/10/10, or by
speaker), then only the training split is balanced with augmented copies, so no copy of a
validation or test clip is trained on. The study augmented before splitting; its 0.912 is an
upper bound.

- Batch: one optimizer step sees --batch-size × --grad-accum clips, grouped by length; each
  micro-batch's summed loss is divided by the whole batch's size (same update as one big batch).
  Each batch is zero-padded up to whole seconds: a few fixed shapes instead of one per length.
- Precision: --amp auto is bf16 autocast on CUDA (fp16 + GradScaler without bf16), fp32 on CPU.
- Each epoch: train, then evaluate validation and test in a fixed, length-sorted order. After
  the last epoch the final model is also evaluated on the training split (train accuracy and
  its confusion matrix); history.csv's train_accuracy is the running accuracy during the epoch.
- Randomness: the seed fixes the split, augmentation, batch order, head initialisation, and
  HuBERT's own LayerDrop (torch RNG) and SpecAugment masks (numpy RNG); --resume restores all.

Outputs in --out: config.json, train.log, history.csv, metrics.json, report.txt, split.csv,
curves.png, confusion_matrix_{train,val,test}.png, class_distribution.png, clip_lengths.png, model/.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from common.batching import LengthGroupedBatches, micro_batches, sorted_batches
from common.metrics import confusion, report_text, summarize
from common.plots import plot_class_counts, plot_confusion, plot_curves, plot_histograms
from common.results import epoch_table, metrics_record, write_config, write_history
from common.run import (Checkpoint, autocast, count_params, grad_scaler, precision_name, run_info, start_run,
                        user_errors, write_json)
from ser.data import SAMPLE_RATE, collate, prepare_dataset, read_manifest, scan_shemo
from ser.model import build_classifier, feature_extractor_for, save_classifier

EVAL_BATCH = 8  # clips per evaluation batch
RESUME_FREE = {"resume", "overwrite", "device"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ser.train", description="Fine-tune HuBERT for speech emotions.")
    p.add_argument("--model", default="facebook/hubert-base-ls960", help="hub id or save_pretrained folder")
    p.add_argument("--feature-extractor", help="hub id or folder of the feature extractor (default: the model's, "
                   "else the study's: 16 kHz, per-clip normalisation, no attention mask)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", type=Path, help="ShEMO folder (*.wav named like F01A01.wav, any sub-folders)")
    src.add_argument("--manifest", type=Path, help="CSV path,label[,speaker]; paths relative to the CSV")
    p.add_argument("--out", type=Path, default=Path("runs/ser/seed0"), help="output folder")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=2, help="clips per micro-batch")
    p.add_argument("--lr", type=float, default=5e-6, help="constant learning rate")
    p.add_argument("--seed", type=int, default=0, help="fixes split, augmentation, batch order, initialisation")
    p.add_argument("--limit", type=int, help="keep a stratified sample of N clips of each split (quick runs)")
    p.add_argument("--split", choices=["random", "speaker"], default="random",
                   help="random: stratified 80/10/10; speaker: no speaker in two splits")
    p.add_argument("--no-balance", action="store_true", help="do not augment the training split")
    p.add_argument("--cache-dir", type=Path, help="augmented clips cache (default: OUT/cache)")
    p.add_argument("--strict", action="store_true", help="an unreadable, empty or silent file is an error")
    p.add_argument("--freeze-feature-encoder", action="store_true", help="freeze HuBERT's convolutional front end")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty --out first")
    args = p.parse_args(argv)
    if args.data_dir is None and args.manifest is None:
        p.error("give --data-dir (ShEMO) or --manifest CSV")
    for flag in ("epochs", "batch_size", "grad_accum", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    hf_logging.disable_progress_bar()
    with user_errors():
        train(args)


def train_epoch(model, waves, labels, batches, opt, scaler, args, device, dtype, pad, desc):
    """One pass; returns (mean loss, running accuracy, seconds, audio seconds). The loss and the
    correct count stay on the device; the bar reads them every 25 steps."""
    model.train()
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    seen, audio, start = 0, 0.0, time.perf_counter()
    bar = tqdm(batches, desc=desc, unit="batch", dynamic_ncols=True)
    for step, batch in enumerate(bar, 1):
        for micro in micro_batches(batch, args.grad_accum):
            inputs = collate(waves, micro, labels, pad, device)
            y = inputs.pop("labels")
            with autocast(device, dtype):
                logits = model(**inputs)
            loss = F.cross_entropy(logits.float(), y, reduction="sum") / len(batch)
            scaler.scale(loss).backward()
            loss_sum += loss.detach() * len(batch)
            correct += (logits.argmax(1) == y).sum()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        seen += len(batch)
        audio += sum(len(waves[i]) for i in batch) / SAMPLE_RATE
        if step % 25 == 0 or step == len(batches):
            dt = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", clips_s=f"{seen / dt:.1f}", audio_s_s=f"{audio / dt:.1f}")
    bar.close()
    return loss_sum.item() / seen, correct.item() / seen, time.perf_counter() - start, audio


@torch.inference_mode()
def evaluate(model, waves, labels, names, device, dtype, pad) -> dict:
    """Figures for one split, in a fixed length-sorted order; keeps the predictions for the report."""
    model.eval()
    order, chunks = [], []
    for idx in sorted_batches([len(w) for w in waves], EVAL_BATCH):
        inputs = collate(waves, idx, labels, pad, device)
        inputs.pop("labels")
        with autocast(device, dtype):
            chunks.append(model(**inputs).float())
        order += idx
    logits = torch.empty(len(order), len(names))
    logits[order] = torch.cat(chunks).cpu()
    pred = logits.argmax(1).numpy()
    out = summarize(labels.numpy(), pred, names, F.cross_entropy(logits, labels).item())
    out["pred"] = pred.tolist()
    return out


def train(args):
    started = start_run(args, RESUME_FREE)  # --out, train.log, device, precision, seeds
    if started is None:
        return
    log, device, dtype = started
    out = args.out

    # 1. Data: find and read the clips, split them, then balance the training split only.
    if args.data_dir:
        clips, bad_names = scan_shemo(args.data_dir)
        for name in bad_names:
            log(f"warning: {name} does not follow ShEMO's naming (like F01A01.wav); left out")
    else:
        clips, bad_names = read_manifest(args.manifest), []
    fe, fe_source = feature_extractor_for(args.model, args.feature_extractor)
    data = prepare_dataset(clips, strict=args.strict, split=args.split, seed=args.seed, limit=args.limit,
                           balance=not args.no_balance, cache_dir=args.cache_dir or out / "cache",
                           do_normalize=fe.do_normalize, split_csv=out / "split.csv", log=log)
    names, waves, ids, counts = data.names, data.waves, data.labels, data.counts
    protocol = (f"{'stratified random' if args.split == 'random' else 'speaker-independent'} 80/10/10 split, then "
                + ("no balancing; " if args.no_balance else "training split balanced by pitch-shift/time-stretch copies; ")
                + "validation and test hold original clips only (leak-free)")
    log(f"{sum(data.sizes.values())} clips ({', '.join(f'{k} {v}' for k, v in data.sizes.items())}), "
        f"{len(names)} classes; training split {data.sizes['train']} -> {len(waves['train'])} clips after "
        f"balancing; {len(data.skipped)} skipped")

    # 2. Model: the encoder, the study's two-layer head, optionally a frozen CNN front end.
    model = build_classifier(args.model, names, bool(fe.return_attention_mask))
    if args.freeze_feature_encoder:
        model.hubert.feature_extractor.requires_grad_(False)
    model.to(device)
    params = count_params(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0,
                            fused=device.type == "cuda")
    scaler = grad_scaler(device, dtype)
    sampler = LengthGroupedBatches([len(w) for w in waves["train"]], args.batch_size * args.grad_accum, args.seed)

    ckpt = Checkpoint(args, RESUME_FREE, model=model, optimizer=opt, scaler=scaler)
    start, history, evals = ckpt.restore(log)
    write_config(out, args, {
        "device": str(device), "precision": precision_name(dtype), "feature_extractor": fe_source,
        "do_normalize": bool(fe.do_normalize), "attention_mask": bool(fe.return_attention_mask),
        "optimizer_batch": args.batch_size * args.grad_accum, "labels": names, "params": params,
        "clips": {k: len(v) for k, v in waves.items()}, "class_counts": counts, "protocol": protocol}, run_info(device))
    log(f"{params['trainable']:,} of {params['total']:,} parameters train; {precision_name(dtype)} on {device}; "
        f"batch {args.batch_size} x {args.grad_accum}; feature extractor: {fe_source}")

    # 3. The loop: train an epoch, evaluate validation and test, checkpoint.
    pad = float(fe.padding_value)
    for epoch in range(start, args.epochs + 1):
        loss, acc, seconds, audio = train_epoch(model, waves["train"], ids["train"], sampler.epoch(epoch), opt, scaler,
                                                args, device, dtype, pad, f"epoch {epoch}/{args.epochs}")
        ev = {k: evaluate(model, waves[k], ids[k], names, device, dtype, pad) for k in ("val", "test")}
        evals.append(ev)
        history.append({"epoch": epoch, "train_loss": loss, "train_accuracy": acc, "val_loss": ev["val"]["loss"],
                        "val_accuracy": ev["val"]["accuracy"], "val_macro_f1": ev["val"]["macro_f1"],
                        "test_accuracy": ev["test"]["accuracy"], "seconds": seconds,
                        "items_per_s": len(waves["train"]) / seconds, "audio_seconds_per_s": audio / seconds})
        log(f"epoch {epoch}: train loss {loss:.4f} acc {acc:.4f}  val loss {ev['val']['loss']:.4f} acc "
            f"{ev['val']['accuracy']:.4f}  test acc {ev['test']['accuracy']:.4f}  "
            f"({len(waves['train']) / seconds:.1f} clips/s, {audio / seconds:.1f} audio-s/s)")
        ckpt.save(epoch, history, evals)

    # 4. Results: the final model on the training split too, then every file.
    final_train = evaluate(model, waves["train"], ids["train"], names, device, dtype, pad)
    save_classifier(model, fe, names, out / "model")
    recipe = (f"batch {args.batch_size} x {args.grad_accum} clips, AdamW lr {args.lr:g} constant, "
              f"{precision_name(dtype)} on {device}, feature extractor: {fe_source}")
    write_results(out, args, history, evals, final_train, ids, names, params, counts, data.skipped + bad_names,
                  protocol, data.clip_seconds, recipe)
    ckpt.remove()
    log(f"done: train {final_train['accuracy']:.4f}, val {evals[-1]['val']['accuracy']:.4f}, "
        f"test {evals[-1]['test']['accuracy']:.4f}; results in {out}")


def figures(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "pred"}


def write_results(out, args, history, evals, final_train, ids, names, params, counts, skipped, protocol, seconds,
                  recipe):
    write_history(out, history, extra_fields=["train_accuracy"])
    record = metrics_record(
        task="ser", experiment="hubert", seed=args.seed, protocol=protocol, epochs=args.epochs, history=history,
        evals=[{k: figures(v) for k, v in e.items()} for e in evals], params=params,
        train=figures(final_train), class_counts=counts, skipped_files=skipped)
    audio = sum(r["audio_seconds_per_s"] * r["seconds"] for r in history)
    record["speed"]["audio_seconds_per_s"] = round(audio / record["speed"]["train_seconds"], 2)
    write_json(out / "metrics.json", record)

    final = {"train": final_train, **evals[-1]}
    plot_curves(history, out / "curves.png", "speech emotion recognition")
    for k, ev in final.items():
        plot_confusion(confusion(ids[k].numpy(), np.asarray(ev["pred"]), len(names)), names,
                       out / f"confusion_matrix_{k}.png", f"{k} split, final model")
    plot_class_counts(counts["before"], counts["after"], out / "class_distribution.png", "training split")
    plot_histograms({"clips": seconds}, out / "clip_lengths.png", "seconds", "clip lengths (all readable clips)")
    lines = [f"Speech emotion recognition, model {args.model}, seed {args.seed}, {args.epochs} epochs",
             f"protocol: {protocol}", f"recipe: {recipe}",
             "train_loss/train_accuracy per epoch: running figures over the epoch's batches (dropout on); "
             "final train/val/test: the final model in eval mode; test is reported only, never used to choose", "",
             epoch_table(history, ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                   "val_macro_f1", "test_accuracy", "seconds", "items_per_s"]), "",
             "final model: " + ", ".join(f"{k} accuracy {v['accuracy']:.4f} (macro F1 {v['macro_f1']:.4f})"
                                         for k, v in final.items()),
             f"best validation epoch {record['best_epoch']}: val accuracy {record['best']['val']['accuracy']:.4f}, "
             f"test accuracy {record['best']['test']['accuracy']:.4f}",
             f"training clips per class before balancing {counts['before']}, after {counts['after']}",
             f"parameters: {params['trainable']:,} trainable of {params['total']:,}",
             f"skipped files: {len(skipped)}" + "".join(f"\n  {s}" for s in skipped), ""]
    for k, ev in final.items():
        lines += [f"{k} split, final model:", report_text(ids[k].numpy(), np.asarray(ev["pred"]), names), ""]
    (out / "report.txt").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
