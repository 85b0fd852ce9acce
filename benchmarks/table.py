"""One table of ratios from the figures a device check left in a folder: our loops (with and
without CUDA graphs) beside the study's recipe run by ../shared/bench/peer_baseline.py in the
same call, on the same card.

    python -m benchmarks.table OUT     # reads OUT/*.json and OUT/peer.log, writes OUT/table.md
"""
import json
import sys
from pathlib import Path


def peer_figures(log: Path) -> dict:
    """The recipe's throughput from peer_baseline.py's JSON lines: NLI pairs/s, SER audio-s/s."""
    out = {}
    if not log.exists():
        return out
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("task") == "nli" and r.get("runner") == "hf-trainer" and not r.get("bf16"):
            out["nli"] = r["samples_per_s"]
        if r.get("task") == "ser" and r.get("runner") == "seed-recipe":
            out["ser"] = r["audio_s_per_s"]
    return out


def main(argv=None):
    folder = Path((argv or sys.argv[1:])[0])
    peer = peer_figures(folder / "peer.log")
    rows = ["| run | ours | ours without warm-up | warm-up s | study's recipe | ratio (with warm-up) |",
            "|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        if "pairs_per_s" in r:
            task, ours, steady, unit = "nli", r["pairs_per_s"], r["pairs_per_s_steady"], "pairs/s"
        elif "audio_seconds_per_s" in r:
            task, ours, unit = "ser", r["audio_seconds_per_s"], "audio-s/s"
            steady = round(r["clips_per_s_steady"] * r["audio_seconds_per_s"] / r["clips_per_s"], 1) \
                if r.get("clips_per_s_steady") else None
        else:
            continue
        base = peer.get(task)
        ratio = f"{ours / base:.2f}x" if base else "n/a"
        rows.append(f"| {path.stem} ({r['epochs']} epoch(s), graphs {'on' if r['cuda_graphs'] else 'off'}, "
                    f"{r['device']}) | {ours} {unit} | {steady} | {r['warmup_seconds']} | "
                    f"{base if base else 'n/a'} | {ratio} |")
    text = "\n".join(rows) + "\n"
    (folder / "table.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
