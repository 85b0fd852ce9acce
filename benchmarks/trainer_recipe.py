"""The study's NLI recipe through HF Trainer (docs/speed.md, "Benchmarks"): the reference our loop
is tested against (tests/test_trainer_recipe.py) and the peer the GPU check times.

    python -m benchmarks.trainer_recipe --model DIR --data-dir DIR --out DIR [--limit N] [--epochs 3]

Rows as nli/data.py reads them (--limit: the same first N); --freeze as in nli.train. train.loss is
Trainer's mean over all steps; history.csv's train_loss, the mean of an epoch's logged losses. With
--grad-accum K, Trainer 5.x steps on K times the large batch's loss (docs/nli.md, "Against HF Trainer").
"""
import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

from common.errors import user_errors
from common.files import write_json
from common.progress import WARMUP_STEPS
from common.results import write_config
from common.run import count_params, run_info
from common.spec import args_record, check_flags
from nli.config import Experiment, NLIConfig
from nli.data import LABEL_NAMES, check_max_length, label_counts, load_farstail, load_tokenizer, token_stats
from nli.evaluate import figures
from nli.model import encoder_layers, freeze_layers, load_classifier
from nli.report import PROTOCOL, NLIResult, write_results


class Pairs(torch.utils.data.Dataset):
    """One split tokenised as the study did (every pair padded to max_length); `served`: each index asked for."""

    def __init__(self, tokenizer, split, max_length: int):
        self.enc = tokenizer(split.premise, split.hypothesis, padding="max_length", truncation=True,
                             max_length=max_length, return_tensors="pt")
        self.labels = torch.tensor(split.label_ids)
        self.served = []

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        self.served.append(i)
        return {**{k: v[i] for k, v in self.enc.items()}, "labels": self.labels[i]}


class Epochs(TrainerCallback):
    """Times each epoch (warm-up steps apart), then predicts validation and test, as nli.train keeps them."""

    def __init__(self, data: dict, hard: dict, per_step: int):
        self.data, self.hard, self.per_step = data, hard, per_step  # per_step: pairs an optimizer step
        self.steps_per_epoch = -(-len(data["train"]) // per_step)
        self.trainer, self.history, self.evals, self.logged = None, [], [], 0

    def _now(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kw):
        self.t0, self.step, self.warm = self._now(), 0, (0.0, 0)

    def on_step_end(self, args, state, control, **kw):
        self.step += 1
        if not self.history and self.step == WARMUP_STEPS and self.steps_per_epoch > WARMUP_STEPS:
            self.warm = (self._now() - self.t0, WARMUP_STEPS * self.per_step)  # (the dataloader reads ahead)

    def on_epoch_end(self, args, state, control, **kw):
        seconds, items = self._now() - self.t0, len(self.data["train"])
        t0 = time.perf_counter()
        ev = {k: self.predict(k) for k in ("val", "test")}
        losses = [e["loss"] for e in state.log_history[self.logged:] if "loss" in e]
        self.logged = len(state.log_history)
        (warm_s, warm_items), steady = self.warm, seconds - self.warm[0]
        self.history.append({
            "epoch": len(self.history) + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": ev["val"]["loss"], "val_accuracy": ev["val"]["accuracy"],
            "val_macro_f1": ev["val"]["macro_f1"], "test_accuracy": ev["test"]["accuracy"], "seconds": seconds,
            "items": items, "items_per_s": items / seconds, "warmup_seconds": warm_s, "warmup_items": warm_items,
            "items_per_s_steady": (items - warm_items) / steady, "eval_seconds": time.perf_counter() - t0})
        self.evals.append(ev)

    def predict(self, split: str) -> dict:
        logits = torch.from_numpy(self.trainer.predict(self.data[split]).predictions).float()
        return figures(logits, self.data[split].labels, self.hard if split == "test" else None)


def parse_args(argv=None) -> NLIConfig:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trainer_recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=NLIConfig.model, help="hub id or save_pretrained folder")
    p.add_argument("--data-dir", type=Path, required=True, help="folder with FarsTail's three files")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--limit", type=int, help="keep the first N rows of each split")
    p.add_argument("--seed", type=int, default=42, help="Trainer's seed (its default 42, as in the study)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16, help="per_device_train_batch_size")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient_accumulation_steps")
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--logging-steps", type=int, default=500, help="Trainer's logging_steps")
    p.add_argument("--max-length", type=int, default=200)
    p.add_argument("--freeze", type=int, default=0, help="freeze the first N encoder layers")
    a = p.parse_args(argv)
    check_flags(p, {k: getattr(a, k) for k in ("epochs", "batch_size", "grad_accum", "limit", "logging_steps",
                                                "max_length")}, a.lr, a.seed)
    if a.freeze < 0:
        p.error("--freeze must be 0 or more")
    return NLIConfig(model=a.model, data_dir=a.data_dir, out=a.out, epochs=a.epochs, batch_size=a.batch_size,
                     lr=a.lr, max_length=a.max_length, seed=a.seed, limit=a.limit, experiment=Experiment(a.freeze),
                     trainer_logging_steps=a.logging_steps, grad_accum=a.grad_accum)


def main(argv=None):
    cfg = parse_args(argv)
    hf_logging.disable_progress_bar()
    with user_errors():
        run(cfg)


def run(cfg: NLIConfig):
    splits = load_farstail(cfg.data_dir, cfg.limit)
    tokenizer = load_tokenizer(cfg.model)
    check_max_length(cfg.max_length, tokenizer, None)
    stats, piece_lengths = token_stats(tokenizer, splits["train"], cfg.max_length)
    data = {k: Pairs(tokenizer, v, cfg.max_length) for k, v in splits.items()}
    set_seed(cfg.seed)  # (a checkpoint without a classification head gets a seeded one)
    model = load_classifier(cfg.model, LABEL_NAMES)
    freeze_layers(model, cfg.experiment.freeze)
    cfg.out.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(cfg.out / "trainer"), per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=64,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        seed=cfg.seed, logging_steps=cfg.trainer_logging_steps, save_strategy="no", report_to="none",
        disable_tqdm=True)
    epochs = Epochs(data, splits["test"].hard, cfg.batch_size * cfg.grad_accum)
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], callbacks=[epochs])
    epochs.trainer = trainer
    output = trainer.train()
    write_batch_order(cfg.out / "batch_order.txt", data["train"].served, len(data["train"]),
                      cfg.batch_size * cfg.grad_accum)

    logged = [{"steps": f"{e['step'] - cfg.trainer_logging_steps + 1}-{e['step']}", "loss": e["loss"]}
              for e in trainer.state.log_history if "loss" in e]
    device = trainer.args.device
    result = NLIResult(
        task="nli", experiment=cfg.experiment.name, seed=cfg.seed, protocol=PROTOCOL, history=epochs.history,
        evals=epochs.evals, params=count_params(model),
        graph_info={"cuda_graphs": False, "graph_shapes": 0, "capture_seconds": 0.0},
        train={"loss": output.training_loss, "trainer_logged": logged,
               "trainer_logged_last": logged[-1]["loss"] if logged else None},
        label_names=LABEL_NAMES, label_ids={k: data[k].labels.numpy() for k in ("val", "test")},
        hard=splits["test"].hard, token_stats=stats, piece_lengths=piece_lengths,
        label_counts=label_counts({k: SimpleNamespace(label_ids=v.labels) for k, v in data.items()}),
        heads_in_model=model.config.num_attention_heads * len(encoder_layers(model)),
        recipe=f"HF Trainer (transformers {transformers.__version__}): batch {cfg.batch_size} x "
               f"{cfg.grad_accum}, lr {cfg.lr:g} decaying linearly to 0, every pair padded to {cfg.max_length}, "
               f"fp32 on {device}")
    flags = ("model", "data_dir", "out", "epochs", "batch_size", "lr", "max_length", "seed", "limit", "freeze",
             "trainer_logging_steps", "grad_accum")
    write_config(cfg.out, args_record({k: v for k, v in cfg.record().items() if k in flags}),
                 {"device": str(device), "steps": trainer.state.global_step, "token_stats": stats}, run_info(device))
    write_json(cfg.out / "trainer_log.json", trainer.state.log_history)
    write_results(cfg.out, cfg, model, tokenizer, result)
    print(f"done: test accuracy {result.final['test']['accuracy']:.4f}; {result.metrics()['speed']['items_per_s']} "
          f"pairs/s; results in {cfg.out}")


def write_batch_order(path: Path, served: list[int], items: int, per_step: int) -> None:
    """The items of each optimizer step as served: `per_step` at a time, an epoch's last step the rest."""
    if len(served) % items:
        raise RuntimeError(f"Trainer's dataloader served {len(served)} items, not whole epochs of {items}")
    epochs = [served[e:e + items] for e in range(0, len(served), items)]
    lines = [" ".join(map(str, ep[s:s + per_step])) for ep in epochs for s in range(0, items, per_step)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
