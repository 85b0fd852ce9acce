"""Batch order for both tasks: length-grouped training batches with a per-epoch seed, each cut
into micro-batches (this process's share of them under torchrun), and a fixed length-sorted order
for evaluation."""
import random

from common.distributed import Dist


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
