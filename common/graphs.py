"""CUDA graphs of the training step (common/step.py's TrainStep): one per input shape for the
micro-step and one for the update, captured without a trace in the run, and the line a failed
capture writes before training eagerly (docs/speed.md, "CUDA graphs")."""
import collections
import contextlib
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from common.device import to_device
from common.rng import rng_state, set_rng_state
from common.step import TrainStep, follow_graph_mode


@contextlib.contextmanager
def sync_errors():
    """Within: any host-device synchronisation raises."""
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


@contextlib.contextmanager
def capturing(graph, pool, stream):
    """Capture the block into `graph` on `stream`; unlike torch.cuda.graph, raise the block's own error."""
    with torch.cuda.stream(stream):
        graph.capture_begin(pool)
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):  # end the broken capture; its own error says nothing new
                graph.capture_end()
            raise
        graph.capture_end()


def failure_line(e: BaseException) -> str:
    """One line for a failed capture: the root cause's type and message, and where it was raised."""
    root, seen = e, {id(e)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:  # the chain's first
        seen.add(id(nxt))
        root = nxt
    message = (str(root).strip().splitlines() or [""])[0][:200]
    frames = traceback.extract_tb(root.__traceback__)
    where = ""
    if frames:
        f, parts = frames[-1], Path(frames[-1].filename).parts
        short = "/".join(parts[parts.index("site-packages") + 1:] if "site-packages" in parts else parts[-2:])
        where = f", raised at {short}:{f.lineno} in {f.name}"
    return f"{type(root).__name__}: {message}{where}"


# A shape served by fewer micro-batches an epoch runs eagerly: capturing costs about three eager passes of it, and
# a replay saves well under half of one of these rare, long, compute-bound passes (an estimate).
MIN_USES = 8


def capture_items(lengths: list[int], bucket: Callable[[int], int], batches: list[list[int]],
                  batch_size: int) -> list[int]:
    """One item of each bucket (`bucket(length)`) that at least MIN_USES of an epoch's micro-batches fill."""
    uses = collections.Counter(bucket(max(lengths[i] for i in batch[k:k + batch_size]))
                               for batch in batches for k in range(0, len(batch), batch_size))
    first = {}
    for i, n in enumerate(lengths):
        if uses[bucket(n)] >= MIN_USES:
            first.setdefault(bucket(n), i)
    return [first[b] for b in sorted(first)]


def capture_examples(make_batch: Callable, lengths: list[int], bucket: Callable[[int], int], batches: list[list[int]],
                     batch_size: int) -> Callable[[], list[dict]]:
    """Training's `examples`: a zero-weight micro-batch (`make_batch(idx, rows, weight)`) per bucket to capture."""
    return lambda: [make_batch([i], batch_size, 0.0) for i in capture_items(lengths, bucket, batches, batch_size)]


def shape_key(batch: dict) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items()))


class Steps:
    """Runs a TrainStep on host batches: by graph replay for the shapes `capture` captured, else eagerly."""

    def __init__(self, step: TrainStep):
        self.step, self.captured, self.update_graph = step, {}, None  # captured: {shape: (graph, static batch)}
        self.capture_seconds, self.tried = 0.0, False

    @property
    def graphed(self) -> bool:
        return self.update_graph is not None

    def info(self) -> dict:
        """metrics.json's graph figures."""
        return {"cuda_graphs": self.graphed, "graph_shapes": len(self.captured),
                "capture_seconds": round(self.capture_seconds, 2)}

    def micro(self, host_batch: dict) -> None:
        graph = self.captured.get(shape_key(host_batch))
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
        """Capture one graph per example's shape and the update graph, or log why not and go on eagerly."""
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
                self.captured[shape_key(ex)] = (made[-1], ex)
            made.append(torch.cuda.CUDAGraph())
            with capturing(made[-1], pool, side):
                step.update()
            self.update_graph = made[-1]
        except Exception as e:  # any failure: never crash on it, train eagerly instead
            self.captured, self.update_graph = {}, None
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
            log(f"CUDA graphs: {len(self.captured)} input shapes and the update captured in {self.capture_seconds:.1f} s")


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
