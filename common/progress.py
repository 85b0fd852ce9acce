"""The figures of a training epoch as it runs: a progress bar, steps.csv and train.log every
--log-every steps (the only host-device syncs of the loop), the non-finite check, and throughput
with and without warm-up (the first WARMUP_STEPS steps of a process and graph capture)."""
import csv
import time
from pathlib import Path

import torch
from tqdm import tqdm

from common.distributed import all_reduce
from common.errors import RunFailed

WARMUP_STEPS = 5  # the first optimizer steps of a process, timed apart from the steady state
STEPS_FIELDS = ["epoch", "step", "lr", "loss", "accuracy", "grad_norm", "items_per_s", "peak_memory_mib"]


def add_steps_rows(path: Path, rows: list[dict]) -> None:
    """Append rows to steps.csv (its header first when it is new)."""
    new = not path.exists()
    try:
        with open(path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=STEPS_FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
    except OSError as e:
        raise RunFailed(f"cannot write {path}: {e.strerror or e}") from None


class Progress:
    """One training epoch's figures, summed over the processes under torchrun (rank 0 writes them)."""

    def __init__(self, steps, run, *, epoch: int, first: bool, batches: int, unit: str):
        """`first`: the first epoch this process runs (graph capture and warm-up are counted in it)."""
        self.step, self.epoch, self.batches, self.unit = steps.step, epoch, batches, unit
        self.d, self.every, self.log, self.steps_csv = run.d, run.spec.log_every, run.log, run.spec.out / "steps.csv"
        if first and self.d.main and self.steps_csv.exists():  # a resumed run redoes this epoch and those after it
            with open(self.steps_csv, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < epoch]
            self.steps_csv.unlink()
            add_steps_rows(self.steps_csv, rows)
        self.capture = steps.capture_seconds if first else 0.0
        self.warmup_at = WARMUP_STEPS if first and batches > WARMUP_STEPS else 0
        self.warm = (0.0, 0, 0.0)  # seconds, items, audio at the end of warm-up
        self.i, self.items, self.audio, self.last = 0, 0, 0.0, None
        self.step.totals.zero_()
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
        peak = torch.cuda.max_memory_allocated(s.device) / 2**20 if s.device.type == "cuda" else None
        row = {"epoch": self.epoch, "step": int(done), "lr": f"{lr:.6g}", "loss": round(loss_sum / max(n, 1), 6),
               "accuracy": round(correct / max(n, 1), 6), "grad_norm": round(norm, 6),
               "items_per_s": round(rate, 2), "peak_memory_mib": None if peak is None else round(peak, 1)}
        self.last = (loss_sum, correct, n)
        if not self.d.main:
            return
        add_steps_rows(self.steps_csv, [row])
        self.log.file_only("step " + "  ".join(f"{k} {v}" for k, v in row.items() if k not in ("epoch", "step"))
                           + f"  (epoch {self.epoch}, step {int(done)})")
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", **{f"{self.unit}_s": f"{rate:.1f}"})

    def finish(self) -> dict:
        """The epoch's figures: training loss and accuracy, seconds, throughput with and without warm-up."""
        self._sync()
        seconds = time.perf_counter() - self.t0 + self.capture
        self.bar.close()
        loss_sum, correct, n = self.last
        warm_s, warm_items, warm_audio = self.warm
        warm_s += self.capture
        steady_s = seconds - warm_s
        first = (self.epoch - 1) * self.batches  # each optimizer step's mean loss (as Trainer's logging averages them)
        losses = all_reduce(self.step.step_losses[first:first + self.batches].clone()) / self.d.world
        out = {"train_loss": loss_sum / n, "train_accuracy": correct / n, "step_losses": losses.tolist(),
               "seconds": seconds, "warmup_seconds": warm_s, "items": self.items, "warmup_items": warm_items,
               "items_per_s": self.items / seconds,
               "items_per_s_steady": (self.items - warm_items) / steady_s if steady_s > 0 else None}
        if self.audio:
            out.update(audio_seconds=self.audio, warmup_audio=warm_audio, audio_seconds_per_s=self.audio / seconds,
                       audio_seconds_per_s_steady=(self.audio - warm_audio) / steady_s if steady_s > 0 else None)
        return out
