"""summary.md from the runs under one folder (as run_all.sh lays them out). It knows no task:
each task's study module (`nli.study`, `ser.study`) gives its section (`section(root, seeds,
missing)`) and its list of differences from the study (`DIFFERENCES`); this module averages
over seeds, lists missing runs and writes the file.

    python -m common.summary --out runs --task nli.study --task ser.study [--seeds N] [--smoke]

With several seeds each cell is mean ± standard deviation over seeds (sample std). A run counts
when its metrics.json exists (written last, so the run finished); others are listed as missing.
"""
import argparse
import importlib
import json
import math
from pathlib import Path

from common.files import write_text


def mean_std(values: list, digits: int = 4) -> str:
    """A table cell: the value of one seed, or mean ± sample standard deviation over seeds."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def short_count(n: int) -> str:
    """A parameter count as 1.2M or 114.2k."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def read_metrics(folder: Path) -> dict | None:
    """A run's metrics.json, or None when it has none or it cannot be read (damaged)."""
    path = folder / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError):
        return None


def links(root: Path, folder: Path) -> str:
    rel = folder.relative_to(root).as_posix()
    pngs = sorted(p.name for p in folder.glob("*.png"))
    return " · ".join([f"[report]({rel}/report.txt)"] + [f"[{p[:-4]}]({rel}/{p})" for p in pngs])


def seed_runs(root: Path, rel: str, seeds: int, missing: list, run_links: list) -> list[dict]:
    """metrics.json of root/rel/seed<k> for every seed; missing ones noted, found ones linked."""
    runs = []
    for seed in range(seeds):
        folder = root / rel / f"seed{seed}"
        m = read_metrics(folder)
        if m is None:
            damaged = (folder / "metrics.json").exists()
            missing.append(f"{rel}/seed{seed}" + (" (its metrics.json is damaged)" if damaged else ""))
        else:
            runs.append(m)
            run_links.append(f"- {rel.replace('/', ' ')} seed {seed}: {links(root, folder)}")
    return runs


def write_summary(root: Path, tasks: list[str], seeds: int = 1, smoke: bool = False) -> list[str]:
    """Write root/summary.md from the given task modules; returns the runs expected but missing."""
    missing: list[str] = []
    body, differ = [], ["## What differs from the study, and why", ""]
    for name in tasks:
        module = importlib.import_module(name)
        body += module.section(root, seeds, missing)
        differ += [f"- {line}" for line in module.DIFFERENCES]
    title = ["# Summary" + (" (SMOKE RUN: tiny random models on generated data; the numbers mean nothing)"
                            if smoke else ""), ""]
    if missing:
        title += [f"**Missing results** (not finished or failed): {', '.join(missing)}", ""]
    write_text(root / "summary.md", "\n".join(title + body + differ) + "\n")
    return missing


def list_main(program: str, description: str, rows: list, differences: list[str], argv=None) -> None:
    """`python -m nli.study --list` (or ser.study): one line per experiment, name<TAB>flags, as
    run_all.sh reads them; without --list, every difference from the study, one per paragraph."""
    p = argparse.ArgumentParser(prog=f"python -m {program}", description=description)
    p.add_argument("--list", action="store_true", help="print name<TAB>flags for each experiment")
    if p.parse_args(argv).list:
        for row in rows:
            print(f"{row.name}\t{row.flags}")
        return
    print("\n\n".join(f"- {line}" for line in differences))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m common.summary", description="Write summary.md for a runs folder.")
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--task", action="append", required=True, help="a task's study module, e.g. nli.study")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    missing = write_summary(a.out, a.task, a.seeds, a.smoke)
    print(f"wrote {a.out / 'summary.md'}" + (f"; missing: {', '.join(missing)}" if missing else ""))


if __name__ == "__main__":
    main()
