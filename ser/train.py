"""Speech emotion recognition: fine-tune HuBERT on ShEMO (or any manifest-listed corpus).

    python -m ser.train --data-dir path/to/shemo --out runs/ser/leak-free-random/seed0
    python -m ser.train --data-dir path/to/shemo --protocol study --out runs/ser/study/seed0
    python -m ser.train --manifest ../shared/data/emodb/manifest.csv --split speaker --out runs/emodb

The model is the study's: 16 kHz audio, HuBERT → mean over time → Linear(hidden, C) →
Linear(C, C), batch 2, 5 epochs, lr 5e-6, cross-entropy. The study names no optimizer or
schedule; ours is AdamW without weight decay at a constant rate, with no gradient clipping.
Two protocols (--protocol):
- leak-free (default): the clips are split first (--split random: stratified 80/10/10; speaker:
  no speaker in two splits), then only the training split is balanced with augmented copies, so
  no copy of a validation or test clip is trained on.
- study: as the study did, the whole corpus is balanced with augmented copies, then every item
  is split at random (train_test_split 0.2 then 0.5, not stratified), so copies of validation
  and test clips are trained on. split.csv shows which (column source_also_in).
Augmented copies: pitch shift ±2 semitones then time stretch 0.85-1.15, with audiomentations'
librosa phase vocoder (--augment-method librosa, as the study used librosa) or signalsmith.

- Batch: one optimizer step sees --batch-size × --grad-accum clips, grouped by length; each
  clip's loss is weighted 1 / (clips in the optimizer batch) (same update as one big batch).
  Each micro-batch is zero-padded up to whole seconds, and a short one filled with zero-weight
  rows: a few fixed shapes instead of one per length.
- Precision: --amp auto is bf16 autocast on CUDA (fp16 + GradScaler without bf16), fp32 on CPU.
- Speed: on CUDA (--cuda-graphs auto) each length bucket's forward/backward and the update are
  captured once as CUDA graphs and replayed (common/step.py); the CPU runs the same step eagerly.
- Each epoch: train, then evaluate validation and test, each clip padded to its own whole-second
  bucket (as ser.predict does). After the last epoch the final model is also evaluated on the
  training split; history.csv's train_accuracy is the running accuracy during the epoch.
- Randomness: the seed fixes the split, augmentation, batch order, head initialisation, and
  HuBERT's LayerDrop and SpecAugment masks (drawn on the device, ser/model.py); --resume
  restores every generator.

Outputs in --out: config.json, train.log, steps.csv, history.csv, report.txt, split.csv,
curves.png, confusion_matrix_{train,val,test}.png, class_distribution.png, clip_lengths.png,
model/, metrics.json (written last).
"""
import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from common.batching import LengthGroupedBatches
from common.checkpoint import Checkpoint
from common.device import autocast, grad_scaler, precision_name
from common.distributed import barrier, distributed, my_micro_batches, sync_unless, wrap
from common.errors import RunFailed, user_errors
from common.metrics import summarize
from common.results import write_config
from common.inputs import model_record
from common.run import Run, check_flags, count_params, run_info
from common.step import Progress, Steps, TrainStep, follow_graph_mode, make_optimizer, set_lr, use_cuda_graphs
from ser.data import (SAMPLE_RATE, augmentation_settings, bucket_batches, bucket_length, build_dataset, collate,
                      corpus_record, read_corpus, read_manifest, scan_shemo)
from ser.model import build_classifier, feature_extractor_for, freeze_feature_encoder
from ser.report import write_results
from ser.study import protocol_text

EVAL_BATCH = 8  # clips per evaluation batch
RESUME_FREE = {"resume", "overwrite", "device", "cuda_graphs", "log_every"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ser.train", description="Fine-tune HuBERT for speech emotions.")
    p.add_argument("--model", default="facebook/hubert-base-ls960", help="hub id or save_pretrained folder")
    p.add_argument("--feature-extractor", help="hub id or folder of the feature extractor (default: the model's, "
                   "else the study's: 16 kHz, per-clip normalisation, no attention mask)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", type=Path, help="ShEMO folder (*.wav named like F01A01.wav, any sub-folders)")
    src.add_argument("--manifest", type=Path, help="CSV path,label[,speaker]; paths relative to the CSV")
    p.add_argument("--out", type=Path, default=Path("runs/ser/leak-free-random/seed0"), help="output folder")
    p.add_argument("--epochs", type=int, default=5, help="passes over the (balanced) training split")
    p.add_argument("--batch-size", type=int, default=2, help="clips per micro-batch")
    p.add_argument("--lr", type=float, default=5e-6, help="constant learning rate")
    p.add_argument("--seed", type=int, default=0, help="fixes split, augmentation, batch order, initialisation")
    p.add_argument("--limit", type=int, help="keep a stratified sample of N clips of each split (quick runs)")
    p.add_argument("--protocol", choices=["leak-free", "study"], default="leak-free",
                   help="leak-free: split, then balance the training split; study: balance the whole corpus, "
                        "then split at random (as the study did)")
    p.add_argument("--split", choices=["random", "speaker"], default="random",
                   help="leak-free protocol: random (stratified 80/10/10) or speaker (no speaker in two splits)")
    p.add_argument("--no-balance", action="store_true", help="leak-free protocol: do not augment the training split")
    p.add_argument("--augment-method", choices=["librosa", "signalsmith"], default="librosa",
                   help="audiomentations backend for pitch shift and time stretch (librosa: phase vocoder)")
    p.add_argument("--cache-dir", type=Path, help="augmented clips cache (default: OUT/cache)")
    p.add_argument("--strict", action="store_true", help="an unreadable, empty or silent file is an error")
    p.add_argument("--freeze-feature-encoder", action="store_true", help="freeze HuBERT's convolutional front end")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto", help="autocast precision")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="replay each step from CUDA graphs (auto: on when the device is CUDA)")
    p.add_argument("--log-every", type=int, default=50, help="read loss, gradient norm and memory every N steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty --out first")
    args = p.parse_args(argv)
    if args.data_dir is None and args.manifest is None:
        p.error("give --data-dir (ShEMO) or --manifest CSV")
    if args.protocol == "study" and (args.split != "random" or args.no_balance):
        p.error("--protocol study balances the whole corpus and splits it at random; --split speaker and "
                "--no-balance belong to --protocol leak-free")
    check_flags(p, args, ("epochs", "batch_size", "grad_accum", "limit", "log_every"))
    return args


def main(argv=None):
    args = parse_args(argv)
    hf_logging.disable_progress_bar()
    with user_errors(interrupted="interrupted; resume with --resume"):
        train(args)


def forward(model):
    """The task's model call on one batch of device tensors: emotion logits."""
    return lambda b: model(b["input_values"], b["lengths"])


def train_epoch(steps: Steps, ddp, d, waves, labels, batches, args, pad, progress: Progress) -> dict:
    """One pass over `batches`: this process's micro-batches' forward/backward (all of the batch
    in one process; its share under torchrun), then the update."""
    ddp.train()
    for batch in batches:
        micros, rows = my_micro_batches(batch, args.batch_size, d)
        for j, idx in enumerate(micros):  # an empty share: zero-weight rows, for the all-reduce
            with sync_unless(ddp, j < len(micros) - 1):  # gradients add up; one all-reduce per step
                steps.micro(collate(waves, idx or batch[:1], labels, pad, steps.step.device, rows=rows,
                                    weight=d.world / len(batch) if idx else 0.0))
        steps.update()
        progress.step_done(len(batch), args.lr, audio=sum(len(waves[i]) for i in batch) / SAMPLE_RATE)
    return progress.finish()


@torch.inference_mode()
def predict_logits(model, waves, device, dtype, pad) -> torch.Tensor:
    """Logits for every clip, each padded to its own whole-second bucket (as ser.predict does)."""
    model.eval()
    order, parts = [], []
    for idx in bucket_batches([len(w) for w in waves], EVAL_BATCH):
        b = {k: v.to(device, non_blocking=True) for k, v in
             collate(waves, idx, torch.zeros(len(waves), dtype=torch.long), pad, device).items()}
        with autocast(device, dtype):
            parts.append(forward(model)(b).float())
        order += idx
    logits = torch.empty(len(order), parts[0].shape[1])
    logits[order] = torch.cat(parts).cpu()
    return logits


def evaluate(model, waves, labels, names, device, dtype, pad) -> dict:
    """Figures for one split; keeps the predictions for the report."""
    logits = predict_logits(model, waves, device, dtype, pad)
    loss = F.cross_entropy(logits, labels).item()
    if not math.isfinite(loss):
        raise RunFailed("the evaluation loss is NaN or infinite; the run stopped and wrote no results")
    pred = logits.argmax(1).numpy()
    out = summarize(labels.numpy(), pred, names, loss)  # accuracy, UAR, macro F1, per-class recall
    out["pred"] = pred.tolist()
    return out


def capture_examples(waves, labels, args, pad, device) -> list[dict]:
    """One training micro-batch for every whole-second bucket a batch can be padded to."""
    first = {}
    for i, w in enumerate(waves):
        first.setdefault(bucket_length(len(w)), i)
    return [collate(waves, [i], labels, pad, device, rows=args.batch_size, weight=0.0) for _, i in sorted(first.items())]


def inputs(args) -> dict:
    """The fingerprint of what the run reads (config.json, checkpoints; common/inputs.py)."""
    record = {**corpus_record(args.data_dir, args.manifest), "model": model_record(args.model)}
    if args.feature_extractor:
        record["feature_extractor"] = model_record(args.feature_extractor)
    return record


def train(args):
    with distributed(args.device) as d, Run(args, RESUME_FREE, d, program="ser.train", inputs=lambda: inputs(args),
                                            reads=(args.data_dir or args.manifest, args.model,
                                                   args.feature_extractor)) as run:
        if run.finished:  # (Run: torchrun; --out; device, precision, seeds)
            return
        log, device, dtype, out = run.log, run.device, run.dtype, args.out

        # 1. Data: find and read the clips, split them, plan the balancing of the training split.
        if args.data_dir:
            clips, bad_names = scan_shemo(args.data_dir)
            for name in bad_names:
                log(f"warning: {name} does not follow ShEMO's naming (like F01A01.wav); left out")
        else:
            clips, bad_names = read_manifest(args.manifest), []
        fe, fe_source = feature_extractor_for(args.model, args.feature_extractor)
        corpus = read_corpus(clips, strict=args.strict, protocol=args.protocol, split=args.split, seed=args.seed,
                             limit=args.limit, balance=not args.no_balance, log=log)

        # 2. Model: the encoder, the study's two-layer head, optionally a frozen CNN front end.
        model = build_classifier(args.model, corpus.names, bool(fe.return_attention_mask))
        if args.freeze_feature_encoder:
            freeze_feature_encoder(model)
        graphs, graphs_why = use_cuda_graphs(args.cuda_graphs, device, dtype, d)
        run.begin()  # inputs checked: only now is anything written into --out

        # 3. The augmented copies (computed once, cached), split.csv, every wave normalised once.
        if not d.main:
            barrier()  # under torchrun rank 0 makes the copies and split.csv; the others then read its cache
        data = build_dataset(corpus, cache_dir=args.cache_dir or out / "cache", do_normalize=fe.do_normalize,
                             split_csv=out / "split.csv" if d.main else None, method=args.augment_method, log=log)
        if d.main:
            barrier()
        names, waves, ids, counts = data.names, data.waves, data.labels, data.counts
        skipped = data.skipped + bad_names
        protocol = protocol_text(args.protocol, args.split, not args.no_balance)
        split_items = {k: {"items": len(v), "augmented": data.copies[k]} for k, v in waves.items()}
        log(f"{len(corpus.clips)} clips, {len(names)} classes; {protocol}; "
            + ", ".join(f"{k} {v['items']} ({v['augmented']} augmented)" for k, v in split_items.items())
            + f"; {len(skipped)} files skipped ({len(data.skipped)} unreadable, empty or silent; "
            f"{len(bad_names)} not named like ShEMO)")

        model.to(device)
        params = count_params(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(trainable, args.lr, device, graphs)
        scaler = grad_scaler(device, dtype)
        sampler = LengthGroupedBatches([len(w) for w in waves["train"]], args.batch_size * args.grad_accum, args.seed)
        steps_per_epoch = len(sampler)

        read = inputs(args)
        ckpt = Checkpoint(args, RESUME_FREE, d, inputs=read, model=model, optimizer=opt, scaler=scaler)
        ddp = wrap(model, d, device, args.seed)  # DDP under torchrun (one RNG stream per process), else the model
        start, history, evals = ckpt.restore(log)
        follow_graph_mode(opt, graphs, device)  # (a checkpoint brings back the optimizer mode it was written in)
        set_lr(opt, args.lr)
        step = TrainStep(forward(ddp), trainable, opt, scaler, device, dtype, clip=None)
        step.step_no.fill_((start - 1) * steps_per_epoch)
        steps = Steps(step)
        pad = float(fe.padding_value)
        if graphs and start <= args.epochs:
            model.train()
            steps.capture(capture_examples(waves["train"], ids["train"], args, pad, device), log)
        if d.main:
            write_config(out, args, {
                "device": str(device), "precision": precision_name(dtype), "feature_extractor": fe_source,
                "cuda_graphs": steps.status(graphs_why), "do_normalize": bool(fe.do_normalize),
                "attention_mask": bool(fe.return_attention_mask), "optimizer_batch": args.batch_size * args.grad_accum,
                "processes": d.world, "labels": names, "params": params,
                "clips": {k: len(v) for k, v in waves.items()}, "class_counts": counts, "protocol": protocol,
                "augmentation": augmentation_settings(args.augment_method)}, run_info(device), read)
        log(f"{params['trainable']:,} of {params['total']:,} parameters train; {precision_name(dtype)} on {device}; "
            f"batch {args.batch_size} x {args.grad_accum}{f' over {d.world} processes' if d.active else ''}; "
            f"feature extractor: {fe_source}; CUDA graphs {steps.status(graphs_why)}")

        # 4. The loop: train an epoch, evaluate validation and test, checkpoint.
        for epoch in range(start, args.epochs + 1):
            progress = Progress(steps, epoch=epoch, first=epoch == start, batches=steps_per_epoch,
                                every=args.log_every, log=log, steps_csv=out / "steps.csv", d=d, unit="clips")
            fig = train_epoch(steps, ddp, d, waves["train"], ids["train"], sampler.epoch(epoch), args, pad, progress)
            t0 = time.perf_counter()
            ev = {k: evaluate(model, waves[k], ids[k], names, device, dtype, pad) for k in ("val", "test")}
            fig["eval_seconds"] = time.perf_counter() - t0
            evals.append(ev)
            history.append({"epoch": epoch, "train_loss": fig["train_loss"], "train_accuracy": fig["train_accuracy"],
                            "val_loss": ev["val"]["loss"], "val_accuracy": ev["val"]["accuracy"],
                            "val_macro_f1": ev["val"]["macro_f1"], "val_uar": ev["val"]["uar"],
                            "test_accuracy": ev["test"]["accuracy"], "test_uar": ev["test"]["uar"],
                            **{k: fig[k] for k in ("seconds", "items_per_s", "warmup_seconds", "items_per_s_steady",
                                                   "items", "warmup_items", "audio_seconds_per_s",
                                                   "audio_seconds_per_s_steady", "audio_seconds", "warmup_audio",
                                                   "eval_seconds")}})
            log(f"epoch {epoch}: train loss {fig['train_loss']:.4f} acc {fig['train_accuracy']:.4f}  val loss "
                f"{ev['val']['loss']:.4f} acc {ev['val']['accuracy']:.4f} UAR {ev['val']['uar']:.4f}  test acc "
                f"{ev['test']['accuracy']:.4f} UAR {ev['test']['uar']:.4f}  "
                f"({fig['items_per_s']:.1f} clips/s, {fig['audio_seconds_per_s']:.1f} audio-s/s)")
            ckpt.save(epoch, history, evals)

        # 5. Results (rank 0): the final model on the training split too, then every file, metrics.json last.
        if not d.main:
            return
        final_train = evaluate(model, waves["train"], ids["train"], names, device, dtype, pad)
        recipe = (f"batch {args.batch_size} x {args.grad_accum} clips, AdamW lr {args.lr:g} constant (our choice: the "
                  f"study names no optimizer), no gradient clipping, {precision_name(dtype)} on {device}, padding to "
                  f"whole seconds, CUDA graphs {'on' if steps.graphed else 'off'}, feature extractor: {fe_source}")
        write_results(out, args, model, fe, history, evals, final_train, ids=ids, names=names, params=params,
                      counts=counts, skipped=skipped, protocol=protocol, seconds=data.clip_seconds, recipe=recipe,
                      graphs=steps.info(), split_items=split_items)
        ckpt.remove()
        log(f"done: train {final_train['accuracy']:.4f}, val {evals[-1]['val']['accuracy']:.4f}, "
            f"test {evals[-1]['test']['accuracy']:.4f}; results in {out}")


if __name__ == "__main__":
    main()
