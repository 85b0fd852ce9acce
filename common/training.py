"""`Training`: the step machinery of one run, built in one place for both loops (optimizer,
checkpoint, DDP, the step, CUDA graphs), and `Recipe`, how the weights are updated."""
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from common.batching import micro_batches
from common.checkpoint import Checkpoint
from common.distributed import wrap
from common.graphs import Steps
from common.progress import Progress
from common.step import TrainStep, follow_graph_mode, set_lr


@dataclass(frozen=True)
class Recipe:
    """How the weights are updated (`decay`: linearly to 0; `clip`: the gradient norm, None for none)."""
    lr: float
    epochs: int
    batch_size: int
    grad_accum: int
    steps_per_epoch: int
    decay: bool
    clip: float | None

    @property
    def optimizer_batch(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based, counted over the whole run)."""
        return self.lr * max(0.0, 1 - step / self.total_steps) if self.decay else self.lr


class Training:
    """One run's AdamW, GradScaler, checkpoint (restored with --resume), DDP, step and CUDA graphs (the loop:
    nli/train.py). `forward(model) -> (batch -> logits)`; `examples()`: a micro-batch per shape to capture."""

    def __init__(self, model, forward: Callable, run, recipe: Recipe, fingerprint: dict, examples: Callable[[], list]):
        self.run, self.recipe, self.model = run, recipe, model
        device, dtype, d = run.device, run.dtype, run.d
        trainable = [p for p in model.parameters() if p.requires_grad]  # frozen layers get no optimizer state
        # AdamW without weight decay (the study's), fused on CUDA; follow_graph_mode below sets the graph mode
        self.optimizer = torch.optim.AdamW(trainable, lr=recipe.lr, weight_decay=0.0, fused=device.type == "cuda")
        if hasattr(model, "restore_dropped_layers"):  # SER's LayerDrop as transformers' (ser/model.py)
            model.restore_dropped_layers(self.optimizer)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # (active for fp16 only)
        self.checkpoint = Checkpoint(run.spec, d, fingerprint, model=model, optimizer=self.optimizer, scaler=scaler)
        self.ddp = wrap(model, d, device, run.spec.seed)  # DDP under torchrun (one RNG stream per process)
        self.start, self.history, self.evals = self.checkpoint.restore(run.log)
        follow_graph_mode(self.optimizer, run.use_graphs, device)  # (a checkpoint brings back its own mode)
        step = TrainStep(forward(self.ddp), trainable, self.optimizer, scaler, device, dtype, recipe.clip,
                         recipe.total_steps)
        step.step_no.fill_((self.start - 1) * recipe.steps_per_epoch)
        self.steps = Steps(step)
        if run.use_graphs and self.start <= recipe.epochs:
            model.train()
            self.steps.capture(examples(), run.log)

    @property
    def graphs_status(self) -> str:
        """"on", or "off (why)": the run's choice (common/device.py), unless capture failed."""
        return "on" if self.steps.graphed else "off (capture failed)" if self.steps.tried else self.run.graphs_why

    def epochs(self):
        """The epochs left to train. However the loop ends, a checkpoint being written is finished first."""
        done = False
        try:
            yield from range(self.start, self.recipe.epochs + 1)
            done = True
        finally:
            self.checkpoint.wait(quiet=not done)

    def train_epoch(self, epoch: int, batches: list[list[int]], make_batch: Callable, unit: str,
                    audio_seconds: Callable | None = None) -> dict:
        """One pass over `batches`; `make_batch(idx, rows, weight)`: the items idx filled up to `rows` rows."""
        d, recipe = self.run.d, self.recipe
        progress = Progress(self.steps, self.run, epoch=epoch, first=epoch == self.start, batches=len(batches),
                            unit=unit)
        self.ddp.train()
        for n, batch in enumerate(batches):
            lr = recipe.lr_at((epoch - 1) * recipe.steps_per_epoch + n)
            set_lr(self.optimizer, lr)
            micros, rows = micro_batches(batch, recipe.batch_size, d)
            for j, idx in enumerate(micros):  # an empty share: zero-weight rows, for the all-reduce
                with self.ddp.no_sync() if d.active and j < len(micros) - 1 else nullcontext():  # one all-reduce a step
                    self.steps.micro(make_batch(idx or batch[:1], rows, d.world / len(batch) if idx else 0.0))
            self.steps.update()
            progress.step_done(len(batch), lr, audio=audio_seconds(batch) if audio_seconds else 0.0)
        return progress.finish()

    def timed_evaluation(self, figures: dict, evaluate: Callable[[], dict]) -> dict:
        """`evaluate()` (-> {"val": figures, "test": figures}), its seconds put into the epoch's `figures`."""
        t0 = time.perf_counter()
        evaluation = evaluate()
        figures["eval_seconds"] = time.perf_counter() - t0
        return evaluation

    def end_epoch(self, epoch: int, row: dict, evaluation: dict, line: str) -> None:
        """Log the epoch's line, keep its results, and checkpoint (not the last epoch: the model is saved then)."""
        self.run.log(line)
        self.history.append(row)
        self.evals.append(evaluation)
        if epoch < self.recipe.epochs:
            self.checkpoint.save(epoch, self.history, self.evals)
