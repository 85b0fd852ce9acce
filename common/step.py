"""The training machinery both loops share: one step function, run eagerly or replayed from CUDA
graphs, and `Training`, which builds it for a run (optimizer, checkpoint, DDP, graphs) and runs
an epoch of steps.

A step is, for each of its K micro-batches (--grad-accum), a forward and backward pass whose
gradients add up in place, then one update: gradient norm (clipped when asked), AdamW, gradients
zeroed. `TrainStep` does this on device tensors only and never reads a value back to the host,
so the host assembles the next batch while the device works, and the same two functions can be
captured as CUDA graphs:

- Every micro-batch has exactly --batch-size rows; a short batch is filled with copies of its
  first row whose weight is 0. Row weights are 1 / (items in the optimizer batch), so the
  weighted sum of per-row losses over K micro-batches is the mean loss of the whole batch:
  accumulation gives the update one large batch would.
- Inputs come padded to a few fixed lengths (buckets), so there are few shapes.
- The learning rate lives in a device tensor when graphs are on (`set_lr` fills it).
- Running figures (loss sum, correct count, items, last gradient norm, the first step whose loss
  or gradient norm was not finite, and each optimizer step's mean loss) stay on the device;
  `Progress` (common/progress.py) reads them every --log-every steps and at each epoch's end.

`Steps` runs a `TrainStep` eagerly or, after `capture`, replays one CUDA graph per input shape
for the micro-step and one for the update (about 800 kernel launches per step become one
replay). Capture warms each shape up on a side stream, then puts back the weights, optimizer
state, counters and every RNG exactly as they were, so capturing changes nothing in the run.
Dropout keeps drawing fresh numbers on every replay (CUDA graphs advance the generator's
offset per replay).

When capture fails, the run says why in one line and trains eagerly. The warm-up runs with
CUDA's sync debug mode set to "error", so a host-device synchronisation (an `.item()`, a copy to
the host, a data-dependent shape) raises there, with its own traceback, before capture starts;
the line names the first error of the chain and the file and line it was raised at (not the
generic "operation failed due to a previous error during capture" that ending a broken capture
raises). The stream, the graphs and their memory pool are released, and the optimizer goes back
to eager mode.

Whether graphs are on has one answer: `Training.graphs` ("on", or "off (why)"): the run's
choice (common/device.py, choose_cuda_graphs) unless capture failed.
"""
import contextlib
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from common.batching import micro_batches
from common.checkpoint import Checkpoint
from common.device import autocast, grad_scaler, to_device
from common.distributed import sync_unless, wrap
from common.progress import Progress
from common.rng import rng_state, set_rng_state


class TrainStep:
    """forward + backward of one micro-batch (`micro`), and the optimizer update (`update`).

    `forward(batch) -> logits` is the task's model call; `batch` is a dict of device tensors that
    holds at least `label_ids` and `weights` (see the module docstring)."""

    def __init__(self, forward, params: list, optimizer, scaler, device: torch.device, dtype, clip: float | None):
        self.forward, self.params, self.optimizer, self.scaler = forward, params, optimizer, scaler
        self.device, self.dtype, self.clip = device, dtype, clip
        self.totals = torch.zeros(3, device=device)  # loss sum, correct, items since the last reset
        self.grad_norm = torch.zeros((), device=device)  # of the last update, before clipping
        self.bad_step = torch.full((), -1.0, device=device)  # first step with a non-finite loss or norm
        self.step_no = torch.zeros((), device=device)  # optimizer steps done in this run
        self.bad_now = torch.zeros((), dtype=torch.bool, device=device)
        self.step_loss = torch.zeros((), device=device)  # this step's mean loss, summed over its micro-batches
        self.step_losses = torch.zeros(1, device=device)  # per optimizer step (keep_step_losses sizes it)

    def keep_step_losses(self, steps: int) -> None:
        """Keep each optimizer step's mean loss, as HF Trainer's logging averages them."""
        self.step_losses = torch.zeros(steps, device=self.device)

    def counters(self) -> list[torch.Tensor]:
        return [self.totals, self.grad_norm, self.bad_step, self.step_no, self.bad_now, self.step_loss,
                self.step_losses]

    def micro(self, batch: dict) -> None:
        with autocast(self.device, self.dtype):
            logits = self.forward(batch)
        ce = F.cross_entropy(logits.float(), batch["label_ids"], reduction="none")
        loss = (ce * batch["weights"]).sum()
        self.scaler.scale(loss).backward()
        self.step_loss += loss.detach()
        real = batch["weights"] > 0
        ce_real = torch.where(real, ce.detach(), 0.0).sum()
        correct = ((logits.detach().argmax(-1) == batch["label_ids"]) & real).sum()
        self.totals += torch.stack([ce_real, correct.float(), real.sum().float()])
        self.bad_now |= ~torch.isfinite(ce_real)

    def update(self) -> None:
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.clip is not None:  # (not folded into fused AdamW's grad_scale: see NOTES.md, 2026-12-01)
            torch.nn.utils.clip_grads_with_norm_(self.params, self.clip, norm)
        self.grad_norm.copy_(norm)
        # fp16 loss scaling overflows now and then by design (the scaler skips that step)
        bad = self.bad_now if self.scaler.is_enabled() else self.bad_now | ~torch.isfinite(norm)
        self.bad_step.copy_(torch.where((self.bad_step < 0) & bad, self.step_no, self.bad_step))
        self.bad_now.zero_()
        at = self.step_no.long().clamp(max=len(self.step_losses) - 1).view(1)
        self.step_losses.index_copy_(0, at, self.step_loss.view(1))
        self.step_loss.zero_()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=False)  # the same gradient tensors every step (graphs need them)
        self.step_no += 1


def set_lr(optimizer, lr: float) -> None:
    """Set the learning rate: in place when it is a device tensor (no host sync, graph-safe)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def make_optimizer(params: list, lr: float, device: torch.device, graphs: bool) -> torch.optim.AdamW:
    """AdamW without weight decay (the study's), fused on CUDA. For CUDA graphs it is capturable
    (its step count stays on the device) and its learning rate is a device tensor."""
    if graphs:
        return torch.optim.AdamW(params, lr=torch.tensor(lr, device=device), weight_decay=0.0, fused=True,
                                 capturable=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=device.type == "cuda")


def follow_graph_mode(optimizer, graphs: bool, device: torch.device) -> None:
    """Put AdamW in the mode this run trains in, whatever mode a loaded checkpoint was written in
    (`load_state_dict` brings back the saved `capturable`, `fused` and learning rate): capturable,
    with the learning rate as a device tensor, for CUDA graphs; else a float learning rate;
    fused on CUDA. Each parameter's step count moves to where that mode keeps it."""
    fused = device.type == "cuda"
    for group in optimizer.param_groups:
        lr = float(group["lr"])  # (a device tensor in a graph run's checkpoint: read once, here)
        group["lr"] = torch.tensor(lr, device=device) if graphs else lr
        group["capturable"], group["fused"] = graphs, fused
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            on_device = graphs or fused
            state["step"] = state["step"].to(device=device if on_device else "cpu", dtype=torch.float32)


@contextlib.contextmanager
def sync_errors():
    """Within: any host-device synchronisation raises (CUDA's sync debug mode "error")."""
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


@contextlib.contextmanager
def capturing(graph, pool, stream):
    """Capture the CUDA work of the block into `graph` on `stream`. Unlike torch.cuda.graph, whose
    exit ends the capture before it restores the stream (so a failed capture leaves the capture
    stream current, and the error that ending it raises hides the real one), the stream is
    always restored and the block's own error is the one raised."""
    with torch.cuda.stream(stream):
        graph.capture_begin(pool)
        try:
            yield
        except BaseException:
            try:
                graph.capture_end()  # ends the broken capture; its own error says nothing new
            except Exception:
                pass
            raise
        graph.capture_end()


def root_cause(e: BaseException) -> BaseException:
    """The first error of a chain (following __cause__ and __context__)."""
    seen = {id(e)}
    while (nxt := e.__cause__ or e.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        e = nxt
    return e


def failure_line(e: BaseException) -> str:
    """One line for a failed capture: the root cause's type and message, and where it was raised."""
    root = root_cause(e)
    message = (str(root).strip().splitlines() or [""])[0][:200]
    frames = traceback.extract_tb(root.__traceback__)
    where = ""
    if frames:
        f = frames[-1]
        path = Path(f.filename)
        parts = path.parts
        short = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts else \
            "/".join(parts[-2:])
        where = f", raised at {short}:{f.lineno} in {f.name}"
    return f"{type(root).__name__}: {message}{where}"


# A shape served by fewer micro-batches an epoch runs eagerly instead of being captured: capturing
# costs two warm-up passes and a capture (about three eager passes of that shape), and the rare
# shapes are the long ones, whose passes are compute-bound, so a replay saves well under half of
# one. (An estimate; the device check's logs say how many shapes were captured.)
MIN_USES = 8


def capture_items(lengths: list[int], bucket: Callable[[int], int], batches: list[list[int]],
                  batch_size: int) -> list[int]:
    """For graph capture: one item of each bucket (`bucket(length)`) that at least MIN_USES of
    an epoch's micro-batches (`batches`: its optimizer batches, cut into `batch_size` rows) are
    padded to. The sampler's order is known in advance, so this counts exactly what an epoch
    serves (one process's view; the other epochs reshuffle the same items)."""
    uses: dict[int, int] = {}
    for batch in batches:
        for k in range(0, len(batch), batch_size):
            b = bucket(max(lengths[i] for i in batch[k:k + batch_size]))
            uses[b] = uses.get(b, 0) + 1
    first = {}
    for i, n in enumerate(lengths):
        if uses.get(bucket(n), 0) >= MIN_USES:
            first.setdefault(bucket(n), i)
    return [first[b] for b in sorted(first)]


def shape_key(batch: dict) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items()))


class Steps:
    """Runs a TrainStep: eagerly, or, for the shapes captured by `capture`, by graph replay.
    Batches come as host tensors (pinned on CUDA); a shape that was not captured runs eagerly."""

    def __init__(self, step: TrainStep):
        self.step = step
        self.graphs: dict[tuple, tuple] = {}
        self.update_graph = None
        self.capture_seconds = 0.0
        self.tried = False

    @property
    def graphed(self) -> bool:
        return self.update_graph is not None

    def status(self, why_off: str) -> str:
        """What config.json and the log say about graphs: on, off (capture failed), or why off."""
        return "on" if self.graphed else ("off (capture failed)" if self.tried else why_off)

    def info(self) -> dict:
        """metrics.json's graph figures."""
        return {"cuda_graphs": self.graphed, "graph_shapes": len(self.graphs),
                "capture_seconds": round(self.capture_seconds, 2)}

    def micro(self, host_batch: dict) -> None:
        graph = self.graphs.get(shape_key(host_batch))
        if graph is None:
            self.step.micro(to_device(host_batch, self.step.device))
            return
        g, static = graph
        for k, v in host_batch.items():
            static[k].copy_(v, non_blocking=True)
        g.replay()

    def update(self) -> None:
        self.update_graph.replay() if self.update_graph is not None else self.step.update()

    def capture(self, examples: list[dict], log) -> None:
        """Capture one micro-step graph per example's shape (the largest first) and the update
        graph. On failure the run says why in one log line (failure_line) and goes on eagerly;
        either way the model, optimizer, counters and RNGs end exactly as they started."""
        step, t0 = self.step, time.perf_counter()
        self.tried = True
        saved = _snapshot(step)
        made = []
        try:
            for p in step.params:  # gradients must exist before capture: graphs add into them in place
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            # the largest shape first: the smaller graphs then reuse the blocks it left in the shared pool
            examples = sorted(examples, key=lambda ex: -sum(v.numel() for v in ex.values()))
            static = [to_device(ex, step.device) for ex in examples]
            side = torch.cuda.Stream(step.device)
            side.wait_stream(torch.cuda.current_stream(step.device))
            with torch.cuda.stream(side), sync_errors():  # warm-up: autograd, cuBLAS workspaces, optimizer state
                for ex in static:
                    step.micro(ex)
                    step.micro(ex)
                step.update()
            torch.cuda.current_stream(step.device).wait_stream(side)
            torch.cuda.synchronize(step.device)
            pool = torch.cuda.graph_pool_handle()
            for ex in static:
                made.append(torch.cuda.CUDAGraph())
                with capturing(made[-1], pool, side):
                    step.micro(ex)
                self.graphs[shape_key(ex)] = (made[-1], ex)
            made.append(torch.cuda.CUDAGraph())
            with capturing(made[-1], pool, side):
                step.update()
            self.update_graph = made[-1]
        except Exception as e:  # any failure: never crash on it, train eagerly instead
            self.graphs, self.update_graph = {}, None
            for g in made:
                g.reset()
            made = static = None
            with contextlib.suppress(Exception):  # release the pool's memory
                torch.cuda.synchronize(step.device)
                torch.cuda.empty_cache()
            follow_graph_mode(step.optimizer, False, step.device)
            log(f"CUDA graphs off: capture failed ({failure_line(e)}); training eagerly")
        _restore(step, saved)
        torch.cuda.synchronize(step.device)
        self.capture_seconds = time.perf_counter() - t0
        if self.graphed:
            log(f"CUDA graphs: {len(self.graphs)} input shapes and the update captured in {self.capture_seconds:.1f} s")


def _snapshot(step: TrainStep) -> dict:
    state = step.optimizer.state
    return {"params": [p.detach().clone() for p in step.params],
            "optim": {(i, k): v.clone() for i, p in enumerate(step.params) for k, v in state.get(p, {}).items()
                      if torch.is_tensor(v)},
            "counters": [t.clone() for t in step.counters()], "rng": rng_state()}


@torch.no_grad()
def _restore(step: TrainStep, saved: dict) -> None:
    for p, v in zip(step.params, saved["params"]):
        p.copy_(v)
        if p.grad is not None:
            p.grad.zero_()
    for i, p in enumerate(step.params):  # state created by the warm-up goes back to AdamW's initial zeros
        for k, v in step.optimizer.state.get(p, {}).items():
            if torch.is_tensor(v):
                v.copy_(saved["optim"][(i, k)]) if (i, k) in saved["optim"] else v.zero_()
    for t, v in zip(step.counters(), saved["counters"]):
        t.copy_(v)
    set_rng_state(saved["rng"])


@dataclass(frozen=True)
class Recipe:
    """How the weights are updated: AdamW at `lr` (decaying linearly to 0 over all steps with
    `decay`, else constant), micro-batches of `batch_size` rows, `grad_accum` of them a step,
    gradient norm clipped to `clip` (None: not clipped), `steps_per_epoch` steps an epoch."""
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
    """The step machinery of one run, built in one place for both loops: AdamW over the trainable
    parameters, the GradScaler, the checkpoint (resumed from with --resume), DDP under torchrun,
    the step function, and CUDA graphs when the run asks for them.

        training = Training(model, forward, run, recipe, inputs, examples)
        for epoch in training.epochs():
            figures = training.train_epoch(epoch, batches, make_batch, unit="pairs")
            ...evaluate...
            evaluation = training.evaluate(figures, lambda: {"val": ..., "test": ...})
            training.end_epoch(epoch, history_row, evaluation, log_line)   # and a checkpoint (not the last)

    `forward(model) -> (batch -> logits)` is the task's model call; `examples()` gives one training
    micro-batch per input shape, for graph capture. The optimizer follows the run's graph mode
    after a checkpoint is loaded (follow_graph_mode), whatever mode wrote it."""

    def __init__(self, model, forward: Callable, run, recipe: Recipe, inputs: dict, examples: Callable[[], list]):
        self.run, self.recipe, self.model = run, recipe, model
        device, dtype, d = run.device, run.dtype, run.d
        trainable = [p for p in model.parameters() if p.requires_grad]  # frozen layers get no optimizer state
        self.optimizer = make_optimizer(trainable, recipe.lr, device, run.graphs)
        if hasattr(model, "restore_dropped_layers"):  # SER's LayerDrop as transformers' (ser/model.py)
            model.restore_dropped_layers(self.optimizer)
        scaler = grad_scaler(device, dtype)
        self.checkpoint = Checkpoint(run.spec, d, inputs, model=model, optimizer=self.optimizer, scaler=scaler)
        self.ddp = wrap(model, d, device, run.spec.seed)  # DDP under torchrun (one RNG stream per process)
        self.start, self.history, self.evals = self.checkpoint.restore(run.log)
        follow_graph_mode(self.optimizer, run.graphs, device)  # (a checkpoint brings back its own mode)
        step = TrainStep(forward(self.ddp), trainable, self.optimizer, scaler, device, dtype, recipe.clip)
        step.keep_step_losses(recipe.total_steps)
        step.step_no.fill_((self.start - 1) * recipe.steps_per_epoch)
        self.steps = Steps(step)
        if run.graphs and self.start <= recipe.epochs:
            model.train()
            self.steps.capture(examples(), run.log)

    @property
    def graphs(self) -> str:
        """"on", or "off (why)": the run's choice, unless capture failed."""
        return self.steps.status(self.run.graphs_why)

    def epochs(self):
        """The epochs left to train (all of them, or those after a resumed checkpoint's). However
        the loop over them ends (done, an error, Ctrl-C), a checkpoint still being written is
        finished first (an error leaving the loop closes this generator, which runs `finally`); its
        write error is raised only when the loop ended well."""
        done = False
        try:
            yield from range(self.start, self.recipe.epochs + 1)
            done = True
        finally:
            self.checkpoint.wait(quiet=not done)

    def train_epoch(self, epoch: int, batches: list[list[int]], make_batch: Callable, unit: str,
                    audio_seconds: Callable | None = None) -> dict:
        """One pass over `batches`: each step's learning rate, this process's micro-batches
        (forward and backward; all of the batch in one process, its share under torchrun), the
        update. `make_batch(idx, rows, weight)` gives a micro-batch of host tensors: the items
        idx filled up to `rows` rows, each real one weighted `weight`. Returns the epoch's figures
        (common/progress.py)."""
        d, recipe = self.run.d, self.recipe
        progress = Progress(self.steps, self.run, epoch=epoch, first=epoch == self.start, batches=len(batches),
                            unit=unit)
        self.ddp.train()
        for n, batch in enumerate(batches):
            lr = recipe.lr_at((epoch - 1) * recipe.steps_per_epoch + n)
            set_lr(self.optimizer, lr)
            micros, rows = micro_batches(batch, recipe.batch_size, d)
            for j, idx in enumerate(micros):  # an empty share: zero-weight rows, for the all-reduce
                with sync_unless(self.ddp, j < len(micros) - 1):  # gradients add up; one all-reduce per step
                    self.steps.micro(make_batch(idx or batch[:1], rows, d.world / len(batch) if idx else 0.0))
            self.steps.update()
            progress.step_done(len(batch), lr, audio=audio_seconds(batch) if audio_seconds else 0.0)
        return progress.finish()

    def evaluate(self, figures: dict, evaluate: Callable[[], dict]) -> dict:
        """The epoch's evaluation, `evaluate()` (-> {"val": figures, "test": figures}); its seconds
        go into the epoch's `figures` (metrics.json's speed.eval_seconds)."""
        t0 = time.perf_counter()
        evaluation = evaluate()
        figures["eval_seconds"] = time.perf_counter() - t0
        return evaluation

    def end_epoch(self, epoch: int, row: dict, evaluation: dict, line: str) -> None:
        """Log the epoch's line, keep its history row and evaluation, and start writing its
        checkpoint (not after the last epoch: the run saves its model then)."""
        self.run.log(line)
        self.history.append(row)
        self.evals.append(evaluation)
        if epoch < self.recipe.epochs:
            self.checkpoint.save(epoch, self.history, self.evals)
