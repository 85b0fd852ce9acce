"""Speech emotion recognition: fine-tune HuBERT on ShEMO (or any manifest-listed corpus).

    python -m ser.train --data-dir path/to/shemo --out runs/ser/leak-free-random/seed0
    python -m ser.train --data-dir path/to/shemo --protocol study --out runs/ser/study/seed0
    python -m ser.train --manifest path/to/manifest.csv --split speaker --out runs/other-corpus
    python -m ser.train --data-dir path/to/shemo --split speaker --folds 5 --out runs/ser/folds  # each fold tested once

The study's model (ser/model.py) and recipe (ser/config.py), with AdamW at a constant rate and no
weight decay (the study names no optimizer). Protocols, balancing, loop and outputs: docs/ser.md.
"""
from transformers.utils import logging as hf_logging

from common.batching import LengthGroupedBatches
from common.device import precision_name
from common.distributed import barrier, distributed
from common.errors import user_errors
from common.inputs import model_record
from common.results import write_config
from common.run import Run, count_params, run_info
from common.spec import run_spec
from common.graphs import capture_examples
from common.inference import split_figures
from common.training import Recipe, Training
from ser.audio import SAMPLE_RATE, augmentation_settings
from ser.config import SERConfig, parse_args
from ser.data import bucket_length, build_dataset, collate, corpus_record, find_clips, read_corpus
from ser.evaluate import clip_logits
from ser.folds import run_folds
from ser.model import build_classifier, feature_extractor_for, forward
from ser.report import SERResult, write_results


def main(argv=None):
    cfg = parse_args(argv)
    hf_logging.disable_progress_bar()
    with user_errors(interrupted="interrupted; resume with --resume"):
        if cfg.protocol.folds:  # K speaker-independent folds, each a run of train() (ser/folds.py)
            run_folds(cfg, train, fingerprint)
        else:
            train(cfg)


def fingerprint(cfg: SERConfig) -> dict:
    """The fingerprint of what the run reads (config.json, checkpoints; common/inputs.py)."""
    return {**corpus_record(cfg.data_dir, cfg.manifest), "model": model_record(cfg.model),
            **({"feature_extractor": model_record(cfg.feature_extractor)} if cfg.feature_extractor else {})}


def train(cfg: SERConfig, corpus=None):
    """One run (`corpus`: the clips already read and split, as ser/folds.py passes each fold's)."""
    with distributed(cfg.device) as d, Run(run_spec("ser.train", cfg), d, fingerprint=lambda: fingerprint(cfg),
                                           reads=(cfg.data_dir or cfg.manifest, cfg.model, cfg.feature_extractor)) as run:
        if run.finished:  # (Run: torchrun; --out; device, precision, CUDA graphs, seeds)
            return
        log, device, dtype, out = run.log, run.device, run.dtype, cfg.out

        # 1. Data: find and read the clips, decide each item's split under the protocol.
        fe, fe_source = feature_extractor_for(cfg.model, cfg.feature_extractor, study=cfg.protocol.kind == "study")
        if corpus is None:
            corpus = read_corpus(find_clips(cfg.data_dir, cfg.manifest), cfg.protocol, cfg.seed, cfg.limit, cfg.strict,
                                 log)

        # 2. Model: the encoder, the study's two-layer head, optionally a frozen CNN front end.
        model = build_classifier(cfg.model, corpus.label_names, bool(fe.return_attention_mask))
        if cfg.freeze_feature_encoder:  # (no backward through it at all: requires_grad_(False) alone still runs it)
            model.hubert.feature_extractor._freeze_parameters()
        run.begin()  # inputs checked: only now is anything written into --out

        # 3. The augmented copies (computed once, cached), split.csv, every wave normalised once; under
        # torchrun rank 0 makes the copies and split.csv, the others then read its cache.
        if not d.main:
            barrier()
        data = build_dataset(corpus, cache_dir=cfg.cache_dir or out / "cache", do_normalize=fe.do_normalize,
                             split_csv=out / "split.csv" if d.main else None, method=cfg.augment_method, log=log)
        if d.main:
            barrier()
        waves, ids, pad = data.waves, data.label_ids, float(fe.padding_value)
        score = lambda k: split_figures(clip_logits(model, waves[k], device, dtype, pad), ids[k],  # noqa: E731
                                        data.label_names)
        log(f"{len(corpus.clips)} clips, {len(data.label_names)} classes; {cfg.protocol.description}; "
            + ", ".join(f"{k} {v['items']} ({v['augmented']} augmented)" for k, v in data.split_items.items())
            + f"; {len(data.skipped_files)} files skipped ({len(corpus.skipped)} unreadable, empty or silent; "
            f"{len(corpus.misnamed)} not named like ShEMO)")

        # 4. Batches of similar length; AdamW at a constant rate; the step machinery.
        model.to(device)
        params = count_params(model)
        lengths = [len(w) for w in waves["train"]]
        sampler = LengthGroupedBatches(lengths, cfg.batch_size * cfg.grad_accum, cfg.seed)
        recipe = Recipe(cfg.lr, cfg.epochs, cfg.batch_size, cfg.grad_accum, len(sampler), decay=False, clip=None)
        read_now = fingerprint(cfg)  # (what the run reads, as it is now)
        make_batch = lambda idx, rows, w: collate(waves["train"], idx, ids["train"], pad, device,  # noqa: E731
                                                  rows=rows, weight=w)
        training = Training(model, forward, run, recipe, read_now,
                            capture_examples(make_batch, lengths, bucket_length, sampler.epoch(1), cfg.batch_size))
        if d.main:
            write_config(out, run.spec.args, {
                "device": str(device), "precision": precision_name(dtype), "feature_extractor": fe_source,
                "cuda_graphs": training.graphs_status, "do_normalize": bool(fe.do_normalize),
                "attention_mask": bool(fe.return_attention_mask), "optimizer_batch": recipe.optimizer_batch,
                "processes": d.world, "labels": data.label_names, "params": params,
                "clips": {k: len(v) for k, v in waves.items()}, "class_counts": data.counts,
                "protocol": cfg.protocol.description, "split_seed": cfg.protocol.seed_of_split(cfg.seed),
                "augmentation": augmentation_settings(cfg.augment_method)},
                run_info(device), read_now)
        log(f"{params['trainable']:,} of {params['total']:,} parameters train; {precision_name(dtype)} on {device}; "
            f"batch {cfg.batch_size} x {cfg.grad_accum}{f' over {d.world} processes' if d.active else ''}; "
            f"feature extractor: {fe_source}; CUDA graphs {training.graphs_status}")

        # 5. The loop: train an epoch, evaluate validation and test, checkpoint.
        for epoch in training.epochs():
            fig = training.train_epoch(epoch, sampler.epoch(epoch), unit="clips", make_batch=make_batch,
                                       audio_seconds=lambda b: sum(lengths[i] for i in b) / SAMPLE_RATE)
            ev = training.timed_evaluation(fig, lambda: {k: score(k) for k in ("val", "test")})
            training.end_epoch(epoch, history_row(epoch, fig, ev), ev, epoch_line(epoch, fig, ev))

        # 6. Results (rank 0): the final model on the training split too, then every file, metrics.json last.
        if not d.main:
            return
        result = SERResult(
            task="ser", experiment=cfg.protocol.name, seed=cfg.seed, protocol=cfg.protocol.description,
            history=training.history, evals=training.evals, params=params, graph_info=training.steps.info(),
            train=score("train"),
            label_names=data.label_names, label_ids={k: v.numpy() for k, v in ids.items()}, records=data.records,
            measure_leak=cfg.protocol.kind == "study", class_counts=data.counts, split_items=data.split_items,
            skipped_files=data.skipped_files, clip_seconds=data.clip_seconds,
            recipe=f"batch {cfg.batch_size} x {cfg.grad_accum} clips, AdamW lr {cfg.lr:g} constant (our choice: the "
            f"study names no optimizer), no gradient clipping, {precision_name(dtype)} on {device}, padding to whole "
            f"seconds, CUDA graphs {'on' if training.steps.graphed else 'off'}, feature extractor: {fe_source}")
        write_results(out, cfg, model, fe, result)
        training.checkpoint.remove()
        log(f"done: train {result.train['accuracy']:.4f}, val {result.final['val']['accuracy']:.4f}, "
            f"test {result.final['test']['accuracy']:.4f}; results in {out}")


def history_row(epoch: int, fig: dict, ev: dict) -> dict:
    """history.csv's row of an epoch (and what metrics.json's speed is summed from)."""
    return {"epoch": epoch, "train_loss": fig["train_loss"], "train_accuracy": fig["train_accuracy"],
            "val_loss": ev["val"]["loss"], "val_accuracy": ev["val"]["accuracy"],
            "val_macro_f1": ev["val"]["macro_f1"], "val_uar": ev["val"]["uar"],
            "test_accuracy": ev["test"]["accuracy"], "test_uar": ev["test"]["uar"],
            **{k: fig[k] for k in ("seconds", "items_per_s", "warmup_seconds", "items_per_s_steady", "items",
                                   "warmup_items", "audio_seconds_per_s", "audio_seconds_per_s_steady",
                                   "audio_seconds", "warmup_audio", "eval_seconds")}}


def epoch_line(epoch: int, fig: dict, ev: dict) -> str:
    return (f"epoch {epoch}: train loss {fig['train_loss']:.4f} acc {fig['train_accuracy']:.4f}  val loss "
            f"{ev['val']['loss']:.4f} acc {ev['val']['accuracy']:.4f} UAR {ev['val']['uar']:.4f}  test acc "
            f"{ev['test']['accuracy']:.4f} UAR {ev['test']['uar']:.4f}  "
            f"({fig['items_per_s']:.1f} clips/s, {fig['audio_seconds_per_s']:.1f} audio-s/s)")


if __name__ == "__main__":
    main()
