"""Seconds per epoch that checkpoints take from training, before and after they were moved off
the critical path (common/checkpoint.py), with a full-size ParsBERT-shaped model.

    python -m benchmarks.checkpoint_speed [--epochs 3] [--steps 6] [--batch 8] [--length 64] [--dir /tmp]

Builds BertForSequenceClassification(BertConfig(vocab_size=100000)) with random weights (12
layers, 768 wide: ParsBERT-base's shape, 163 M parameters) and AdamW with its state filled, so a
checkpoint holds what a real one does (about 1.8 GiB). Then trains --epochs "epochs" of --steps
AdamW steps on random tokens three ways and times each whole loop:
- none: no checkpoint (the training alone);
- before: the old way, a checkpoint written and verified in the loop after every epoch, the last
  one too (written, then deleted when the run finishes);
- after: the new way (Checkpoint.save): none after the last epoch; the others copied to host
  buffers at the epoch's end and written by a background thread while the next epoch trains.
Checkpoint seconds per epoch = (loop seconds - the same loop with none) / epochs; the seconds
the loop itself was blocked (the copy; waiting for a write still in flight) are printed beside them. On a
machine with few cores the background write competes with training for them, which this counts.
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def model_and_optimizer():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100000, num_labels=3))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)


def train_steps(model, optimizer, n: int, batch: int, length: int) -> None:
    for _ in range(n):
        ids = torch.randint(0, 100000, (batch, length))
        loss = model(input_ids=ids, labels=torch.randint(0, 3, (batch,))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def loop(mode: str, model, optimizer, a, folder: Path) -> dict:
    """Train a.epochs epochs with checkpoints written `mode`'s way; the loop's seconds and the
    seconds it was blocked by checkpoints."""
    from common.checkpoint import Checkpoint
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = SimpleNamespace(out=folder, args={}, resume=False, free=set())
    checkpoint = Checkpoint(spec, model=model, optimizer=optimizer)
    blocked, waited, t0 = 0.0, 0.0, time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        train_steps(model, optimizer, a.steps, a.batch, a.length)
        t = time.perf_counter()
        if mode == "before":  # the old Checkpoint.save: the live state, written in the loop
            state = {"epoch": epoch, "args": {}, "world": 1, "inputs": {}, "rng": {}, "history": [], "evals": [],
                     "model": model.state_dict(), "optimizer": optimizer.state_dict()}
            checkpoint._write(epoch, state)
            checkpoint.wait()
        elif mode == "after" and epoch < a.epochs:
            w = time.perf_counter()
            checkpoint.wait()  # (save() would wait for the previous write here: counted apart from the copy)
            waited += time.perf_counter() - w
            checkpoint.save(epoch, [], [])
        blocked += time.perf_counter() - t
    t = time.perf_counter()
    checkpoint.wait()  # Training.epochs() does this when the loop ends
    blocked += time.perf_counter() - t
    waited += time.perf_counter() - t
    seconds = time.perf_counter() - t0
    size = max((p.stat().st_size for p in folder.glob("checkpoint-epoch*.pt")), default=0)
    shutil.rmtree(folder, ignore_errors=True)
    return {"loop_seconds": round(seconds, 2), "blocked_seconds": round(blocked, 2),
            "of_which_waiting_for_a_write": round(waited, 2) if mode == "after" else None, "checkpoint_bytes": size}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs per loop (the study's NLI run has 3)")
    p.add_argument("--steps", type=int, default=6, help="AdamW steps per epoch")
    p.add_argument("--batch", type=int, default=8, help="rows per step")
    p.add_argument("--length", type=int, default=64, help="tokens per row")
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where checkpoints are written")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)
    model, optimizer = model_and_optimizer()
    train_steps(model, optimizer, 1, a.batch, a.length)  # AdamW's state exists from here on, as in a run
    folder = a.dir / f"checkpoint-speed-{time.time_ns()}"
    result = {"threads": torch.get_num_threads(), **{k: getattr(a, k) for k in ("epochs", "steps", "batch", "length")}}
    for mode in ("none", "before", "after"):
        result[mode] = loop(mode, model, optimizer, a, folder)
        print(mode, result[mode], flush=True)
    for mode in ("before", "after"):
        extra = result[mode]["loop_seconds"] - result["none"]["loop_seconds"]
        result[mode]["checkpoint_seconds_per_epoch"] = round(extra / a.epochs, 2)
        result[mode]["blocked_seconds_per_epoch"] = round(result[mode]["blocked_seconds"] / a.epochs, 2)
    print(json.dumps(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
