"""One training step for both loops, run eagerly or replayed from CUDA graphs.

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
  or gradient norm was not finite) stay on the device; `Progress` reads them every N steps.

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
"""
import contextlib
import csv
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.device import autocast, peak_memory_mib, to_device
from common.distributed import Dist, all_reduce
from common.errors import RunFailed, UserError
from common.rng import rng_state, set_rng_state

WARMUP_STEPS = 5  # the first optimizer steps of a process, timed apart from the steady state
STEPS_FIELDS = ["epoch", "step", "lr", "loss", "accuracy", "grad_norm", "items_per_s", "peak_memory_mib"]


class TrainStep:
    """forward + backward of one micro-batch (`micro`), and the optimizer update (`update`).

    `forward(batch) -> logits` is the task's model call; `batch` is a dict of device tensors that
    holds at least `labels` and `weights` (see the module docstring)."""

    def __init__(self, forward, params: list, optimizer, scaler, device: torch.device, dtype, clip: float | None):
        self.forward, self.params, self.optimizer, self.scaler = forward, params, optimizer, scaler
        self.device, self.dtype, self.clip = device, dtype, clip
        self.totals = torch.zeros(3, device=device)  # loss sum, correct, items since the last reset
        self.grad_norm = torch.zeros((), device=device)  # of the last update, before clipping
        self.bad_step = torch.full((), -1.0, device=device)  # first step with a non-finite loss or norm
        self.step_no = torch.zeros((), device=device)  # optimizer steps done in this run
        self.bad_now = torch.zeros((), dtype=torch.bool, device=device)

    def counters(self) -> list[torch.Tensor]:
        return [self.totals, self.grad_norm, self.bad_step, self.step_no, self.bad_now]

    def micro(self, batch: dict) -> None:
        with autocast(self.device, self.dtype):
            logits = self.forward(batch)
        ce = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
        loss = (ce * batch["weights"]).sum()
        self.scaler.scale(loss).backward()
        real = batch["weights"] > 0
        ce_real = torch.where(real, ce.detach(), 0.0).sum()
        correct = ((logits.detach().argmax(-1) == batch["labels"]) & real).sum()
        self.totals += torch.stack([ce_real, correct.float(), real.sum().float()])
        self.bad_now |= ~torch.isfinite(ce_real)

    def update(self) -> None:
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.clip, norm)
        self.grad_norm.copy_(norm)
        # fp16 loss scaling overflows now and then by design (the scaler skips that step)
        bad = self.bad_now if self.scaler.is_enabled() else self.bad_now | ~torch.isfinite(norm)
        self.bad_step.copy_(torch.where((self.bad_step < 0) & bad, self.step_no, self.bad_step))
        self.bad_now.zero_()
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


def use_cuda_graphs(choice: str, device: torch.device, dtype, d: Dist | None = None) -> tuple[bool, str]:
    """(on?, why) for --cuda-graphs auto|on|off. `on` where graphs cannot run is a user error."""
    if choice == "off":
        return False, "off (--cuda-graphs off)"
    if d is not None and d.active:
        if choice == "on":
            raise UserError("--cuda-graphs on is not supported under torchrun yet (DDP's gradient all-reduce would "
                            "have to be captured too); use auto or off")
        return False, "off (not captured under torchrun/DDP yet)"
    if device.type != "cuda":
        if choice == "on":
            raise UserError("--cuda-graphs on needs a CUDA device, and this run is on the CPU; use auto or off")
        return False, "off (no CUDA device)"
    if dtype == torch.float16:
        if choice == "on":
            raise UserError("--cuda-graphs on does not work with fp16, whose GradScaler reads the device every step; "
                            "use --amp bf16 or --cuda-graphs off")
        return False, "off (fp16: the GradScaler reads the device every step)"
    return True, "on"


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
        """Capture one micro-step graph per example's shape and the update graph. On failure
        the run says why in one log line (failure_line) and goes on eagerly; either way the
        model, optimizer, counters and RNGs end exactly as they started."""
        step, t0 = self.step, time.perf_counter()
        self.tried = True
        saved = _snapshot(step)
        made = []
        try:
            for p in step.params:  # gradients must exist before capture: graphs add into them in place
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
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


def trim_steps_csv(path: Path, before_epoch: int) -> None:
    """Keep the rows of epochs before `before_epoch` (a resumed run redoes the rest)."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < before_epoch]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=STEPS_FIELDS)
        w.writeheader()
        w.writerows(rows)


class Progress:
    """One training epoch's figures. The device's running figures are read every `every` steps
    and at the end (the only host-device syncs of the loop): a progress bar, a row of steps.csv
    and a line in train.log (learning rate, loss, gradient norm, items/s, peak GPU memory), and
    the non-finite check. The first WARMUP_STEPS steps of a process (and graph capture) are
    timed apart, so throughput is given with and without warm-up."""

    def __init__(self, steps: Steps, *, epoch: int, first: bool, batches: int, every: int, log, steps_csv: Path,
                 unit: str, d: Dist | None = None):
        """`first`: the first epoch this process runs (graph capture and warm-up are counted in it).
        Under torchrun the figures are summed over the processes; rank 0 shows and writes them."""
        step = steps.step
        self.step, self.epoch, self.batches, self.every, self.log = step, epoch, batches, every, log
        self.d = d or Dist()
        if first and self.d.main:
            trim_steps_csv(steps_csv, epoch)  # a resumed run redoes this epoch and those after it
        self.steps_csv, self.unit = steps_csv, unit
        self.capture = steps.capture_seconds if first else 0.0
        self.warmup_at = WARMUP_STEPS if first and batches > WARMUP_STEPS else 0
        self.warm = (0.0, 0, 0.0)  # seconds, items, audio at the end of warm-up
        self.i, self.items, self.audio, self.last = 0, 0, 0.0, None
        step.totals.zero_()
        self.bar = tqdm(total=batches, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True,
                        disable=not self.d.main)
        self.t0 = time.perf_counter()
        self.mark = (self.t0, 0)

    def _sync(self):
        if self.step.device.type == "cuda":
            torch.cuda.synchronize(self.step.device)

    def step_done(self, items: int, lr: float, audio: float = 0.0) -> None:
        self.i += 1
        self.items += items
        self.audio += audio
        self.bar.update()
        if self.i == self.warmup_at:
            self._sync()
            self.warm = (time.perf_counter() - self.t0, self.items, self.audio)
        if self.i % self.every == 0 or self.i == self.batches:
            self._read(lr)

    def _read(self, lr: float) -> None:
        s = self.step
        figures = torch.cat([s.totals, s.grad_norm[None], s.bad_step[None], s.step_no[None]])
        all_reduce(figures[:3])  # every process's share of the loss and counts (a no-op alone)
        all_reduce(figures[4:5], "max")  # a non-finite value on any process stops them all
        loss_sum, correct, n, norm, bad, done = figures.tolist()  # one sync
        if bad >= 0:
            self.bar.close()  # end the bar's line, so the error stands on its own line
            epoch, at = int(bad) // self.batches + 1, int(bad) % self.batches + 1
            raise RunFailed(f"the loss or gradient norm became NaN or infinite at epoch {epoch}, step {at}; the run "
                            "stopped and wrote no results (the checkpoint of the last finished epoch is kept). "
                            "A smaller --lr, or a look at the data, may help")
        now = time.perf_counter()
        rate = (self.items - self.mark[1]) / max(now - self.mark[0], 1e-9)
        self.mark = (now, self.items)
        peak = peak_memory_mib(s.device)
        row = {"epoch": self.epoch, "step": int(done), "lr": f"{lr:.6g}", "loss": round(loss_sum / max(n, 1), 6),
               "accuracy": round(correct / max(n, 1), 6), "grad_norm": round(norm, 6),
               "items_per_s": round(rate, 2), "peak_memory_mib": None if peak is None else round(peak, 1)}
        self.last = (loss_sum, correct, n)
        if not self.d.main:
            return
        new = not self.steps_csv.exists()
        try:
            with open(self.steps_csv, "a", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=STEPS_FIELDS)
                if new:
                    w.writeheader()
                w.writerow(row)
        except OSError as e:
            raise RunFailed(f"cannot write {self.steps_csv}: {e.strerror or e}") from None
        self.log.file_only("step " + "  ".join(f"{k} {v}" for k, v in row.items() if k not in ("epoch", "step"))
                           + f"  (epoch {self.epoch}, step {int(done)})")
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", **{f"{self.unit}_s": f"{rate:.1f}"})

    def finish(self) -> dict:
        """The epoch's figures: mean training loss and running accuracy over its items, seconds
        (graph capture included), throughput with and without warm-up."""
        self._sync()
        seconds = time.perf_counter() - self.t0 + self.capture
        self.bar.close()
        loss_sum, correct, n = self.last
        warm_s, warm_items, warm_audio = self.warm
        warm_s += self.capture
        steady_s = seconds - warm_s
        out = {"train_loss": loss_sum / n, "train_accuracy": correct / n, "seconds": seconds,
               "items": self.items, "warmup_items": warm_items, "items_per_s": self.items / seconds,
               "warmup_seconds": warm_s,
               "items_per_s_steady": (self.items - warm_items) / steady_s if steady_s > 0 else None}
        if self.audio:
            out["audio_seconds"], out["warmup_audio"] = self.audio, warm_audio
            out["audio_seconds_per_s"] = self.audio / seconds
            out["audio_seconds_per_s_steady"] = (self.audio - warm_audio) / steady_s if steady_s > 0 else None
        return out
