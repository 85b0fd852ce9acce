"""Fine-tune ParsBERT on FarsTail (Persian NLI), with the study's ablations (docs/nli.md).

    python -m nli.train --out runs/nli/all                      # all layers trained
    python -m nli.train --out runs/nli/freeze9 --freeze 9       # first 9 encoder layers frozen
    python -m nli.train --out runs/nli/keep9 --keep-layers 9    # only the first 9 layers kept
    python -m nli.train --out runs/nli/prune --prune-heads 0.5  # half the heads removed, at random
    python -m nli.train --out runs/nli/pm --prune-heads 0.5 --prune-by masking  # the study's: 50% of weights masked

The recipe (the study's: HF Trainer's defaults; every setting in nli/config.py), the ablations
and their order, batches, precision and evaluation: docs/nli.md. Outputs in --out: docs/outputs.md.
"""
from transformers.utils import logging as hf_logging

from common.batching import LengthGroupedBatches, read_batch_order
from common.device import precision_name
from common.distributed import distributed
from common.errors import user_errors
from common.inputs import files_record, model_record
from common.results import logged_like_trainer, write_config
from common.run import Run, count_params, run_info
from common.spec import run_spec
from common.graphs import capture_examples
from common.training import Recipe, Training
from nli.config import NLIConfig, parse_args
from nli.data import (LABEL_NAMES, bucket_length, check_max_length, collate, encode, farstail_record, label_counts,
                      load_farstail, load_tokenizer, token_stats)
from nli.evaluate import figures, pair_logits
from nli.importance import head_importance
from nli.model import apply_experiment, encoder_layers, forward, load_classifier, make_masks_permanent, uses_sdpa
from nli.report import PROTOCOL, NLIResult, write_results


def main(argv=None):
    cfg = parse_args(argv)
    hf_logging.disable_progress_bar()  # our own bars only
    with user_errors(interrupted="interrupted; resume with --resume"):
        train(cfg)


def fingerprint(cfg: NLIConfig) -> dict:
    """The fingerprint of what the run reads (config.json, checkpoints; common/inputs.py)."""
    order = {"batch_order": files_record(cfg.batch_order.parent, [cfg.batch_order.name])} if cfg.batch_order else {}
    return {"data": farstail_record(cfg.data_dir), "model": model_record(cfg.model), **order}


def train(cfg: NLIConfig):
    with distributed(cfg.device) as d, Run(run_spec("nli.train", cfg), d, fingerprint=lambda: fingerprint(cfg),
                                           reads=(cfg.data_dir, cfg.model)) as run:
        if run.finished:  # (Run: torchrun; --out; device, precision, CUDA graphs, seeds)
            return
        log, device, dtype, out = run.log, run.device, run.dtype, cfg.out

        # 1. Data: read and check FarsTail, tokenise each split once.
        splits = load_farstail(cfg.data_dir, cfg.limit, log)
        tokenizer = load_tokenizer(cfg.model)
        check_max_length(cfg.max_length, tokenizer, None)
        stats, piece_lengths = token_stats(tokenizer, splits["train"], cfg.max_length)
        data = {name: encode(tokenizer, split, cfg.max_length, cfg.experiment.hypothesis_only)
                for name, split in splits.items()}
        log(f"FarsTail: {', '.join(f'{k} {len(v)}' for k, v in splits.items())} pairs; longest premise "
            f"{stats['max_premise_tokens']} and hypothesis {stats['max_hypothesis_tokens']} word pieces; "
            f"{stats['truncated_pairs']} training pairs truncated to {cfg.max_length}")
        batch = cfg.batch_size * cfg.grad_accum  # pairs per optimizer step: similar lengths, or exactly the file's
        sampler = (read_batch_order(cfg.batch_order, len(data["train"]), batch, cfg.epochs) if cfg.batch_order
                   else LengthGroupedBatches(data["train"].lengths.tolist(), batch, cfg.seed))

        # 2. Model and the experiment: keep layers, then prune heads (or mask weights), then freeze.
        model = load_classifier(cfg.model, LABEL_NAMES).to(device)
        check_max_length(cfg.max_length, tokenizer, getattr(model.config, "max_position_embeddings", None))
        applied = apply_experiment(model, cfg.experiment, cfg.seed, importance_of(data["train"], cfg, run))
        run.begin()  # inputs checked: only now is anything written into --out
        params = count_params(model)

        # 3. AdamW over trainable parameters, linear decay; the step machinery.
        recipe = Recipe(cfg.lr, cfg.epochs, cfg.batch_size, cfg.grad_accum, len(sampler), decay=True, clip=1.0)
        sdpa, read_now = uses_sdpa(model), fingerprint(cfg)  # (what the run reads, as it is now)
        make_batch = lambda idx, rows, w: collate(data["train"], idx, device, rows=rows, weight=w,  # noqa: E731
                                                  sdpa_mask=sdpa)
        training = Training(model, forward, run, recipe, read_now, capture_examples(
            make_batch, data["train"].lengths.tolist(), lambda n: bucket_length(n, cfg.max_length), sampler.epoch(1),
            cfg.batch_size))
        if d.main:
            write_config(out, run.spec.args, {
                "experiment": cfg.experiment.name, "device": str(device), "precision": precision_name(dtype),
                "cuda_graphs": training.graphs_status, "optimizer_batch": recipe.optimizer_batch, "processes": d.world,
                "steps": recipe.total_steps, "pruned_heads": applied.pruned_heads,
                "head_importance": applied.head_scores, "masked_weights": applied.masked_weights,
                "layers": len(encoder_layers(model)), "params": params, "token_stats": stats,
                "pairs": {k: len(v) for k, v in splits.items()}}, run_info(device), read_now)
        log(f"{cfg.experiment.name}: {params['trainable']:,} of {params['total']:,} parameters train; "
            f"{precision_name(dtype)} on {device}; batch {cfg.batch_size} x {cfg.grad_accum}"
            f"{f' over {d.world} processes' if d.active else ''}; {recipe.total_steps} steps; "
            f"CUDA graphs {training.graphs_status}")

        # 4. The loop: train an epoch, evaluate validation and test, checkpoint.
        for epoch in training.epochs():
            fig = training.train_epoch(epoch, sampler.epoch(epoch), unit="pairs", make_batch=make_batch)
            ev = training.timed_evaluation(fig, lambda: {
                "val": figures(pair_logits(model, data["val"], device, dtype), data["val"].label_ids),
                "test": figures(pair_logits(model, data["test"], device, dtype), data["test"].label_ids,
                                splits["test"].hard)})
            training.end_epoch(epoch, history_row(epoch, fig, ev), ev, epoch_line(epoch, fig, ev))

        # 5. Results (rank 0), metrics.json last; then the checkpoints go.
        if not d.main:
            return
        result = NLIResult(
            task="nli", experiment=cfg.experiment.name, seed=cfg.seed, protocol=PROTOCOL, history=training.history,
            evals=training.evals, params=params, graph_info=training.steps.info(),
            train=train_loss(training.history, cfg.trainer_logging_steps), label_names=LABEL_NAMES,
            label_ids={k: data[k].label_ids.numpy() for k in ("val", "test")}, hard=splits["test"].hard,
            token_stats=stats, piece_lengths=piece_lengths, applied=applied,
            heads_in_model=model.config.num_attention_heads * len(encoder_layers(model)),
            label_counts=label_counts(data),
            recipe=f"batch {cfg.batch_size} x {cfg.grad_accum} pairs, AdamW lr {cfg.lr:g} decaying linearly to 0, "
            f"gradient norm clipped to 1.0, {precision_name(dtype)} on {device}, max length {cfg.max_length}, padding "
            f"to multiples of 16 word pieces, CUDA graphs {'on' if training.steps.graphed else 'off'}")
        make_masks_permanent(model)  # (--prune-by masking: the model saves as a plain one, zeros in place)
        model.config.hypothesis_only = cfg.experiment.hypothesis_only  # (nli.predict then feeds the hypothesis alone)
        write_results(out, cfg, model, tokenizer, result)
        training.checkpoint.remove()
        log(f"done: test accuracy {result.final['test']['accuracy']:.4f}; results in {out}")


def importance_of(train_data, cfg: NLIConfig, run):
    """With --prune-by importance: head scores on the first --importance-batches training batches."""
    if cfg.experiment.prune_by != "importance":
        return None
    batches = LengthGroupedBatches(train_data.lengths.tolist(), cfg.batch_size, cfg.seed).epoch(0)
    return lambda m: head_importance(m, train_data, batches[:cfg.importance_batches], run.device, run.dtype)


def train_loss(history: list[dict], every: int) -> dict:
    """metrics.json's `train`: the last epoch's mean loss, and the loss as HF Trainer logs it every `every` steps."""
    logged = logged_like_trainer([x for row in history for x in row["step_losses"]], every)
    return {"loss": history[-1]["train_loss"], "trainer_logged": logged,
            "trainer_logged_last": logged[-1]["loss"] if logged else None}


def history_row(epoch: int, fig: dict, ev: dict) -> dict:
    """history.csv's row of an epoch (and what metrics.json's speed is summed from)."""
    return {"epoch": epoch, "train_loss": fig["train_loss"], "val_loss": ev["val"]["loss"],
            "val_accuracy": ev["val"]["accuracy"], "val_macro_f1": ev["val"]["macro_f1"],
            "test_accuracy": ev["test"]["accuracy"],
            **{k: fig[k] for k in ("seconds", "items_per_s", "warmup_seconds", "items_per_s_steady", "items",
                                   "warmup_items", "eval_seconds", "step_losses")}}


def epoch_line(epoch: int, fig: dict, ev: dict) -> str:
    return (f"epoch {epoch}: train loss {fig['train_loss']:.4f}  val loss {ev['val']['loss']:.4f}  val acc "
            f"{ev['val']['accuracy']:.4f}  test acc {ev['test']['accuracy']:.4f}  ({fig['items_per_s']:.1f} pairs/s"
            + (f"; {fig['items_per_s_steady']:.1f} after warm-up" if fig["warmup_seconds"] else "") + ")")


if __name__ == "__main__":
    main()
