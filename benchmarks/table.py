"""The device check's table (docs/speed.md, "The GPU check"): our loops, graphs on and off, beside the study's
recipe on the same card and items, one epoch; and the goal ratios (GOAL: NLI over the study's whole 3-epoch
run, projected from the measured epoch; SER at batch 2).

    python -m benchmarks.table OUT     # reads OUT/{nli,ser}_{recipe,graphs,eager}.json, writes OUT/table.md
"""
import json
import sys
from pathlib import Path

GOAL = {"nli": 8.0, "ser": 4.0}
NLI_RUN_PAIRS = 3 * 7266  # the study's whole NLI run: 3 epochs of FarsTail's training split


def figures(task: str, r: dict) -> dict:
    """One run's figures in the task's unit (NLI pairs, SER audio seconds): rates, warm-up, training seconds."""
    if "speed" in r:  # a metrics.json (the Trainer recipe writes nli.train's)
        s = r["speed"]
        return {"rate": s["items_per_s"], "steady": s.get("items_per_s_steady"), "warmup_s": s.get("warmup_seconds", 0.0),
                "warmup_units": s.get("warmup_items", 0), "seconds": s["train_seconds"], "capture": None}
    rate, warm = ("pairs_per_s", "warmup_pairs") if task == "nli" else ("audio_seconds_per_s", "warmup_audio_seconds")
    return {"rate": r[rate], "steady": r[f"{rate}_steady"], "warmup_s": r["warmup_seconds"], "warmup_units": r[warm],
            "seconds": r["train_seconds"], "capture": r["capture_seconds"]}


def projected_seconds(f: dict, units: float) -> float | None:
    """Seconds to train `units`: the measured warm-up once, the rest at the steady rate."""
    return f["warmup_s"] + (units - f["warmup_units"]) / f["steady"] if f["steady"] else None


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-") or not Path(argv[0]).is_dir():
        print("usage: python -m benchmarks.table OUT  (the device check's output folder)", file=sys.stderr)
        raise SystemExit(2)
    folder = Path(argv[0])
    rows = ["| run | whole run: units/s (s) | steady: units/s | warm-up s (capture) | whole-run ratio | steady ratio |",
            "|---|---|---|---|---|---|"]
    goals, losses = [], []
    for task, unit in (("nli", "pairs"), ("ser", "audio-s")):
        runs = {}
        for mode in ("recipe", "graphs", "eager"):
            path = folder / f"{task}_{mode}.json"
            if not path.exists():
                rows.append(f"| {task} {mode} | missing ({path.name} was not written: see steps.log) | | | | |")
                continue
            r = runs[mode] = json.loads(path.read_text())
            f, base = figures(task, r), (figures(task, runs["recipe"]) if "recipe" in runs else None)
            label = f"{task} {mode} " + (f"(batch {r['batch']}, {r['precision']}, {r['device']})" if "batch" in r
                                         else "(HF Trainer, batch 16, fp32, every pair padded to 200)")
            capture = f" ({f['capture']})" if f["capture"] is not None else ""
            rows.append(f"| {label} | {f['rate']} {unit}/s ({f['seconds']}) | {f['steady']} | {f['warmup_s']}{capture} | "
                        f"{ratio(f['rate'], base and base['rate'])} | {ratio(f['steady'], base and base['steady'])} |")
        if "graphs" in runs and "recipe" in runs:
            ours, base = figures(task, runs["graphs"]), figures(task, runs["recipe"])
            if task == "nli":
                a, b = projected_seconds(ours, NLI_RUN_PAIRS), projected_seconds(base, NLI_RUN_PAIRS)
                got = b / a if a and b else None
                what = (f"the whole 3-epoch run with capture, projected from the measured epoch: ours {a:.0f} s, "
                        f"the recipe {b:.0f} s" if got else "no steady rate")
            else:
                got = ours["rate"] / base["rate"] if ours["rate"] and base["rate"] else None
                what = "the whole measured run at batch 2, warm-up and capture in"
        else:
            got, what = None, "the recipe's or our graphed run is missing"
        goals.append(f"- {task.upper()} goal >= {GOAL[task]:g}x: {f'{got:.2f}x' if got else 'n/a'} "
                     f"({what}){' MET' if got and got >= GOAL[task] else ''}")
        if "graphs" in runs and "eager" in runs:
            a, b = runs["graphs"]["per_epoch_train_loss"], runs["eager"]["per_epoch_train_loss"]
            worst = max(abs(x - y) / abs(y) for x, y in zip(a, b)) if a and b else None
            losses.append(f"- {task}: training loss per epoch, graphs {a}, eager {b}"
                          + (f"; relative difference {100 * worst:.3f}% (target: within 1%)" if worst is not None else ""))
    text = "\n".join(rows) + "\n\nGoals (ours with graphs over the recipe):\n" + "\n".join(goals) + "\n\n" \
        + "\n".join(losses) + "\n"
    (folder / "table.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
