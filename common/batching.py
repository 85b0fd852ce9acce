"""Batch order for both tasks: length-grouped training batches with a per-epoch seed, each cut
into micro-batches (this process's share of them under torchrun), a batch order given in full
(replayed from a file), and a fixed length-sorted order for evaluation."""
import random
from pathlib import Path

from common.distributed import Dist
from common.errors import UserError


class LengthGroupedBatches:
    """Training batches of items with similar length, in an order fixed by (seed, epoch).

    Each epoch: shuffle all items, cut them into windows of `batch_size * window` items, sort each
    window by length, cut it into batches, then shuffle the batches. Padding per batch then stays
    small while the batch order stays random. The same (seed, epoch) always gives the same
    batches, so a resumed run sees exactly the batches an uninterrupted run would, and every
    process of a distributed run can shard the same list.
    """

    def __init__(self, lengths, batch_size: int, seed: int, window: int = 50):
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.window = window

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
    """A batch order given in full: `steps` holds every optimizer batch of the run in order, the
    same number in each epoch (the same interface as LengthGroupedBatches)."""

    def __init__(self, steps: list[list[int]], epochs: int):
        self.steps, self.per_epoch = steps, len(steps) // epochs

    def __len__(self) -> int:
        return self.per_epoch

    def epoch(self, epoch: int) -> list[list[int]]:
        return self.steps[(epoch - 1) * self.per_epoch:epoch * self.per_epoch]


def read_batch_order(path: Path, items: int, batch: int, epochs: int) -> GivenBatches:
    """A batch order file (--batch-order): one line per optimizer step of the whole run, the
    space-separated indices (0-based) of its items, at most `batch` of them, each once, below
    `items`; the lines divide evenly into `epochs`, each epoch's lines holding every item once.
    A malformed file: an error naming the line (or the epoch)."""
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
    """Evaluation order: items sorted by length (stable), so each batch pads little and every
    run evaluates each item beside the same batchmates."""
    lengths = [int(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def micro_batches(batch: list[int], batch_size: int, d: Dist) -> tuple[list[list[int]], int]:
    """This process's share of one optimizer batch, cut into micro-batches, and the rows each
    micro-batch is filled up to. Every process gets the same number of micro-batches (an empty
    one is all zero-weight filler rows), so each does exactly one gradient all-reduce per step.
    One process: the batch cut into micro-batches of batch_size."""
    share = batch[d.rank::d.world]
    rows = -(-batch_size // d.world)
    count = -(-(-(-len(batch) // d.world)) // rows)
    return [share[k * rows:(k + 1) * rows] for k in range(count)], rows
