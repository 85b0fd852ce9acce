"""One table of ratios from the figures a device check left in a folder: our loops (with and
without CUDA graphs) beside the study's recipe, run by ../shared/bench/peer_baseline.py in the
same call on the same card.

    python -m benchmarks.table OUT     # reads OUT/{nli,ser}_{graphs,eager}.json and OUT/peer.log, writes OUT/table.md

Three ratios per run, ours over the recipe's:
- with warm-up: our throughput over the whole timed epoch, graph capture and first steps in;
- steady: our throughput once warm;
- whole experiment (projected): the study's whole training, NLI 3 epochs of 7,266 pairs, SER 5
  epochs of the study protocol's 5,083 training items (about 4.1 s each), timed as warm-up +
  the rest at the steady rate + evaluation each epoch (scaled to the study's split sizes),
  against the recipe's training time alone (the peer script does not time its evaluation, so
  this favours the recipe). Checkpoint writing is left out of both.
"""
import json
import sys
from pathlib import Path

# The study's whole experiments: epochs, training items per epoch, evaluation items per epoch.
WHOLE = {"nli": {"epochs": 3, "items": 7266, "eval_items": 1537 + 1564},
         "ser": {"epochs": 5, "items": 5083, "eval_items": 1271, "seconds_per_item": 4.11}}


def peer_figures(log: Path) -> dict:
    """The recipe's throughput from peer_baseline.py's JSON lines: NLI pairs/s, SER audio-s/s."""
    out = {}
    if not log.exists():
        return out
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # Trainer's own summary line is a Python dict, not JSON
            continue
        if not isinstance(r, dict):
            continue
        if r.get("task") == "nli" and r.get("runner") == "hf-trainer" and not r.get("bf16"):
            out["nli"] = r["samples_per_s"]
        if r.get("task") == "ser" and r.get("runner") == "seed-recipe":
            out["ser"] = r["audio_s_per_s"]
    return out


def ours(task: str, r: dict) -> dict:
    """Our figures in the recipe's unit (NLI pairs/s, SER audio-s/s) and the projected seconds of
    the study's whole experiment."""
    w = WHOLE[task]
    if task == "nli":
        rate, steady, warm_units = r["pairs_per_s"], r["pairs_per_s_steady"], r["warmup_pairs"]
        units = w["epochs"] * w["items"]
        eval_per_epoch = r["eval_seconds"] / r["epochs"] * w["eval_items"] / max(r["eval_pairs"], 1)
    else:
        rate, steady, warm_units = r["audio_seconds_per_s"], r["audio_seconds_per_s_steady"], r["warmup_audio_seconds"]
        units = w["epochs"] * w["items"] * w["seconds_per_item"]
        eval_per_epoch = r["eval_seconds"] / r["epochs"] * w["eval_items"] / max(r["eval_clips"], 1)
    whole = r["warmup_seconds"] + (units - warm_units) / steady + w["epochs"] * eval_per_epoch if steady else None
    return {"rate": rate, "steady": steady, "whole_seconds": whole, "units": units}


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def main(argv=None):
    folder = Path((argv or sys.argv[1:])[0])
    peer = peer_figures(folder / "peer.log")
    rows = ["| run | ours, with warm-up | ours, steady | warm-up and capture s | study's recipe | ratio with warm-up "
            "| ratio steady | whole experiment (projected): ours s, recipe s, ratio |", "|---|---|---|---|---|---|---|---|"]
    losses = []
    for task, unit in (("nli", "pairs/s"), ("ser", "audio-s/s")):
        runs = {}
        for mode in ("graphs", "eager"):
            path = folder / f"{task}_{mode}.json"
            if not path.exists():
                rows.append(f"| {task} {mode} | missing ({path.name} was not written) | | | | | | |")
                continue
            r = json.loads(path.read_text())
            runs[mode] = r
            o, base = ours(task, r), peer.get(task)
            recipe_whole = o["units"] / base if base else None
            rows.append(f"| {task}, {mode} (graphs {'on' if r['cuda_graphs'] else 'off'}, {r['epochs']} epoch(s), "
                        f"batch {r['batch']}, {r['precision']}, {r['device']}) | {o['rate']} {unit} | {o['steady']} | "
                        f"{r['warmup_seconds']} (capture {r['capture_seconds']}) | {base or 'n/a'} | "
                        f"{ratio(o['rate'], base)} | {ratio(o['steady'], base)} | "
                        + (f"{o['whole_seconds']:.0f}, {recipe_whole:.0f}, {ratio(recipe_whole, o['whole_seconds'])} |"
                           if o["whole_seconds"] and recipe_whole else "n/a |"))
        if len(runs) == 2:
            a, b = runs["graphs"]["per_epoch_train_loss"], runs["eager"]["per_epoch_train_loss"]
            worst = max(abs(x - y) / abs(y) for x, y in zip(a, b)) if a and b else None
            losses.append(f"- {task}: training loss per epoch, graphs {a}, eager {b}"
                          + (f"; largest relative difference {100 * worst:.3f}% (target: within 1%)" if worst is not None
                             else ""))
    text = "\n".join(rows) + "\n\n" + "\n".join(losses) + "\n"
    (folder / "table.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
