"""Batch order for both tasks: length-grouped training batches, cut into micro-batches, a batch
order given in a file, and a fixed length-sorted order for evaluation."""
import random
from pathlib import Path

from common.distributed import Dist
from common.errors import UserError


class LengthGroupedBatches:
    """Batches of items of similar length, in random order, the same for the same (seed, epoch)."""

    def __init__(self, lengths, batch_size: int, seed: int, window: int = 50):
        self.lengths, self.batch_size, self.seed, self.window = [int(n) for n in lengths], batch_size, seed, window

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            window = sorted(order[start:start + span], key=self.lengths.__getitem__)
            batches += [window[i:i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        rng.shuffle(batches)
        return batches


class GivenBatches:
    """Every optimizer batch of the run in order (`steps`), as LengthGroupedBatches gives them."""

    def __init__(self, steps: list[list[int]], epochs: int):
        self.steps, self.per_epoch = steps, len(steps) // epochs

    def __len__(self) -> int:
        return self.per_epoch

    def epoch(self, epoch: int) -> list[list[int]]:
        return self.steps[(epoch - 1) * self.per_epoch:epoch * self.per_epoch]


def read_batch_order(path: Path, items: int, batch: int, epochs: int) -> GivenBatches:
    """A --batch-order file: per optimizer step of the run, the 0-based indices of its items."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--batch-order {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    steps = []
    for no, line in enumerate(lines, start=1):
        where = f"--batch-order {path}, line {no}"
        try:
            idx = [int(x) for x in line.split()]
        except ValueError:
            raise UserError(f"{where}: not a list of item numbers: {line[:60]!r}") from None
        if not 1 <= len(idx) <= batch:
            raise UserError(f"{where}: {len(idx)} items; a step holds 1 to {batch} (--batch-size x --grad-accum)")
        bad = [i for i in idx if not 0 <= i < items]
        if bad or len(set(idx)) < len(idx):
            what = f"item {bad[0]} is not among the {items} training items (0 to {items - 1})" if bad else \
                "an item appears twice"
            raise UserError(f"{where}: {what}")
        steps.append(idx)
    if not steps or len(steps) % epochs:
        raise UserError(f"--batch-order {path}: {len(steps)} lines (optimizer steps) do not divide into --epochs "
                        f"{epochs} equal epochs")
    given = GivenBatches(steps, epochs)
    for epoch in range(1, epochs + 1):  # an epoch is one pass: every training item once
        seen = sorted(i for step in given.epoch(epoch) for i in step)
        if seen != list(range(items)):
            first = (epoch - 1) * given.per_epoch + 1
            raise UserError(f"--batch-order {path}: epoch {epoch} (lines {first}-{first + given.per_epoch - 1}) holds "
                            f"{len(seen)} items, {len(set(seen))} of them distinct; an epoch holds each of the {items} "
                            "training items once")
    return given


def sorted_batches(lengths, batch_size: int) -> list[list[int]]:
    """Evaluation order: items sorted by length (stable: each item always has the same batchmates)."""
    order = sorted(range(len(lengths)), key=lambda i: int(lengths[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def micro_batches(batch: list[int], batch_size: int, d: Dist) -> tuple[list[list[int]], int]:
    """This process's share of an optimizer batch in micro-batches (as many in every process), and their rows."""
    share = batch[d.rank::d.world]
    rows = -(-batch_size // d.world)
    count = -(-(-(-len(batch) // d.world)) // rows)
    return [share[k * rows:(k + 1) * rows] for k in range(count)], rows
