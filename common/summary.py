"""summary.md and summary.png from the runs under one folder (docs/outputs.md). The task modules
named on the command line give their section (`section(report)`) and their differences from the
study (`DIFFERENCES`); this module reads and checks each run's files and averages over seeds.

    python -m common.summary --out runs --task nli.study --task ser.study [--seeds N] [--smoke]
"""
import argparse
import csv
import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.files import write_text
from common.metrics import summarize
from common.stats import holm, interval_text, intervals, paired, seed_intervals

SIGNIFICANCE = 0.05  # after Holm's correction


def mean_std(values: list, digits: int = 4) -> str:
    """A table cell: the value of one seed, or mean ± sample standard deviation over seeds."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "n/a"
    mean = sum(values) / len(values)
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


class Damaged(ValueError):
    """A run's result files that cannot be what the run wrote; the run is listed, not used."""


def check_shape(m: dict, required: tuple) -> None:
    """Raise Damaged unless metrics.json holds every `required` dotted path: a finite number, or a {} dict, [] list."""
    for path in required:
        kind = {"{": dict, "[": list}.get(path[-2:-1], (int, float))
        value = m
        for key in path.rstrip("{}[]").split("."):
            value = value.get(key) if isinstance(value, dict) else None
        number = kind not in (dict, list)
        if not isinstance(value, kind) or isinstance(value, bool) or (number and not math.isfinite(value)):
            raise Damaged(f"its metrics.json has no {path.rstrip('{}[]')} of the right kind")
    for split in ("test", "pooled"):  # (a run's test figures; the folds' pooled ones)
        figures = m.get(split) if isinstance(m.get(split), dict) else {}
        for key, bounds in (figures.get("intervals") if isinstance(figures.get("intervals"), dict) else {}).items():
            value = figures.get(key)  # [low, high] holding it, or [null, null] (none)
            if bounds != [None, None] and not (
                    isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)
                    and isinstance(value, (int, float)) and bounds[0] <= value <= bounds[1]):
                raise Damaged(f"its metrics.json's {split}.intervals.{key} is not an interval around its figure")


def test_predictions(folder: Path, m: dict) -> list[dict] | None:
    """The test rows of a run's predictions.csv (None without one); Damaged unless they reproduce `m`'s."""
    path = folder / "predictions.csv"
    if not path.exists():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    except (OSError, UnicodeDecodeError, KeyError, csv.Error) as e:
        raise Damaged(f"its predictions.csv cannot be read: {e}") from None
    names = list(m["test"]["per_class"])
    unknown = {str(r.get(k)) for r in rows for k in ("true", "predicted")} - set(names)
    if unknown:
        raise Damaged(f"its predictions.csv holds labels the run does not have: {', '.join(sorted(unknown))}")
    found = summarize([names.index(r["true"]) for r in rows], [names.index(r["predicted"]) for r in rows], names)
    expected = sum(c.get("support", 0) for c in m["test"]["per_class"].values())
    if len(rows) != expected or any(abs(found[k] - m["test"][k]) > 1e-9 for k in ("accuracy", "macro_f1")):
        raise Damaged(f"its predictions.csv gives test accuracy {found['accuracy']:.4f} over {len(rows)} items, its "
                      f"metrics.json {m['test']['accuracy']:.4f} over {expected}")
    return rows


def seeds_note(runs: list[dict], seeds: int) -> str:
    """" (seeds 0, 2: 2 of 3)" when a row's figures come from fewer seeds than were asked for."""
    seeds_run = ", ".join(str(m["_seed"]) for m in runs)
    return f" (seed{'s' * (len(runs) > 1)} {seeds_run}: {len(runs)} of {seeds})" if len(runs) < seeds else ""


def test_items(runs: list[dict]) -> tuple | None:
    """The test items of runs (every column but the prediction), or None when seeds differ or lack them."""
    if any(run["_test"] is None for run in runs):
        return None
    keys = {tuple(tuple(v for k, v in r.items() if k != "predicted") for r in run["_test"]) for run in runs}
    return keys.pop() if len(keys) == 1 else None


def correctness(runs: list[dict]) -> np.ndarray:
    """Per test item, the share of the runs (seeds, every one on the same items) that get it right."""
    return np.mean([[r["true"] == r["predicted"] for r in run["_test"]] for run in runs], axis=0)


def test_intervals(runs: list[dict]) -> dict[str, list[float]]:
    """The 95% intervals of the test figures of one run, or of several seeds' average."""
    if len(runs) == 1:
        return runs[0]["test"].get("intervals", {})
    if any(m["_test"] is None for m in runs):
        return {}
    n = len(runs[0]["test"]["per_class"])
    ids = lambda m, col: [list(m["test"]["per_class"]).index(r[col]) for r in m["_test"]]  # noqa: E731
    if test_items(runs) is not None:
        return intervals(ids(runs[0], "true"), [ids(m, "predicted") for m in runs], n)
    return seed_intervals([ids(m, "true") for m in runs], [ids(m, "predicted") for m in runs], n)


def test_cells(runs: list[dict], found: dict[str, list[float]]) -> dict[str, str]:
    """The cells of the test figures: mean (± std over seeds) and the 95% interval (`found`)."""
    return {key: mean_std([m["test"][key] for m in runs]) + (f" {interval_text(found[key])}" if key in found else "")
            for key in ("accuracy", "uar", "macro_f1")}


def row(*cells) -> str:
    """A markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def header(*names) -> list[str]:
    """A markdown table's header and rule."""
    return [row(*names), "|" + "---|" * len(names)]


def comparisons(reference: str, found: dict[str, list[dict]]) -> dict[str, dict]:
    """common.stats.paired of each run set against `reference`'s on the same test items, with Holm's p (`holm_p`)."""
    if reference not in found or (items := test_items(found[reference])) is None:
        return {}
    base = correctness(found[reference])
    out = {name: paired(correctness(runs), base) for name, runs in found.items()
           if name != reference and test_items(runs) == items}
    for result, p in zip(out.values(), holm([r["p"] for r in out.values()])):
        result.update(holm_p=p, significant=p < SIGNIFICANCE)
    return out


def comparison_cell(result: dict | None) -> str:
    return "" if result is None else (
        f"{result['difference']:+.4f} {interval_text(result['interval'], signed=True)}, p {result['p']:.3g} "
        f"(Holm {result['holm_p']:.3g})" + (" *" if result["significant"] else ""))


def comparison_words(reference: str, count: int, items: str) -> str:
    """What the comparison column means, in words a student understands."""
    return (f"Against {reference}: the test accuracy difference, its 95% paired bootstrap interval, and McNemar's "
            f"exact p on the {items} one model gets right and the other wrong (how likely so lopsided a split would "
            f"be if both models were equally good), adjusted by Holm's correction for the {count} comparisons; * marks "
            f"an adjusted p below {SIGNIFICANCE}, unlikely to be chance. A difference without * may still be real, "
            "but this test set cannot tell it from chance.")


@dataclass
class Report:
    """Handed to each task's `section(report)`, which adds missing runs, findings and summary.png's points."""
    root: Path
    seeds: int = 1
    only: set | None = None
    missing: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    points: list = field(default_factory=list)  # (label, ours, [low, high], the study's or None)
    tested: list = field(default_factory=list)  # the task's findings: "`all` 0.8260 [0.8000, 0.8500]; the study's ..."
    links: list = field(default_factory=list)  # the task's runs: "- nli all seed 0: [report](...) · [curves](...)"

    def asked(self, name: str) -> bool:
        return self.only is None or name in self.only

    def runs(self, rel: str, required: tuple = ()) -> list[dict]:
        """metrics.json of root/rel/seed<k> for every seed, with its checked test predictions (`_test`)."""
        runs = []
        for seed in range(self.seeds):
            name, folder = f"{rel}/seed{seed}", self.root / rel / f"seed{seed}"
            if not (folder / "metrics.json").exists():
                self.missing.append(name)
                continue
            try:
                if (m := read_metrics(folder)) is None:
                    raise Damaged("its metrics.json is damaged")
                check_shape(m, required)
                runs.append({**m, "_test": test_predictions(folder, m), "_seed": seed})
            except Damaged as e:
                self.missing.append(f"{name} ({e})")
                continue
            files = [f"[report]({name}/report.txt)"] + [f"[{p.stem}]({name}/{p.name})"
                                                         for p in sorted(folder.glob("*.png"))]
            self.links.append(f"- {rel.replace('/', ' ')} seed {seed}: {' · '.join(files)}")
        return runs

    def measured(self, task: str, name: str, runs: list[dict], study: float | None = None) -> tuple:
        """A run set's row name (seeds noted), `col(part, key, digits=4)` (mean ± std over seeds) and test cells;
        its test accuracy goes to summary.png and to `tested`, with whether the study's figure lies inside."""
        found, note = test_intervals(runs), seeds_note(runs, self.seeds)
        ours, bounds = float(np.mean([m["test"]["accuracy"] for m in runs])), found.get("accuracy") or [np.nan] * 2
        self.points.append((f"{task} {name}", ours, bounds, study))
        inside = study is not None and np.isfinite(bounds).all() and bounds[0] <= study <= bounds[1]
        self.tested.append(f"`{name}`{note} {ours:.4f} {interval_text(bounds)}" + (
            f"; the study's {study:.3f} {'inside' if inside else 'outside'}" if study is not None else ""))
        col = lambda part, key, digits=4: mean_std([m[part].get(key) for m in runs], digits)  # noqa: E731
        return name + note, col, test_cells(runs, found)


def write_summary(root: Path, tasks: list[str], seeds: int = 1, smoke: bool = False) -> list[str]:
    """Write summary.md and summary.png from task modules ("ser.study:study,..." for some rows)."""
    body, differ = [], ["## What differs from the study, and why", ""]
    report, learns = Report(root, seeds), []
    for task in tasks:
        name, _, rows = task.partition(":")
        module = importlib.import_module(name)
        report.only, report.tested, report.links = set(rows.split(",")) if rows else None, [], []
        body += module.section(report) + ["", *report.links, ""]
        differ += [f"- {line}" for line in module.DIFFERENCES]
        learns.append(module.SMOKE_LEARNS)
    title = ["# Summary" + (" (SMOKE RUN: tiny models from random weights, generated data)" if smoke else ""), ""]
    if smoke:  # each task says what its tiny model learns from its generated data
        title += [f"What shows learning: {' and '.join(learns)}. "
                  "What means nothing: every comparison with the study.", ""]
    if report.points:
        from common.plots import plot_summary  # (matplotlib: not for `python -m nli.study --list`)
        plot_summary(report.points, root / "summary.png", "Test accuracy, ours (95% interval) and the study's")
        title += ["![test accuracy, ours beside the study's](summary.png)", ""]
    n = f"{seeds} seeds, mean" if seeds > 1 else "one seed"
    if report.findings:
        title += [f"**Findings** ({n}):"] + [f"- {line}" for line in report.findings] + [""]
    if report.missing:
        title += [f"**Missing results** (not finished, failed or damaged): {', '.join(report.missing)}", ""]
    write_text(root / "summary.md", "\n".join(title + body + differ) + "\n")
    return report.missing


def list_main(program: str, description: str, rows: list, differences: list[str], folds=None, argv=None) -> None:
    """`python -m nli.study [--list]` (or ser.study): name<TAB>flags per experiment (run_all.sh), or the differences."""
    p = argparse.ArgumentParser(prog=f"python -m {program}", description=description)
    p.add_argument("--list", action="store_true", help="print name<TAB>flags for each experiment")
    if folds:
        p.add_argument("--folds", type=int, help="also list the speaker-independent K-fold run")
    a = p.parse_args(argv)
    listed = [f"{r.name}\t{r.flags}" for r in rows + (folds(a.folds) if folds and a.folds else [])]
    print("\n".join(listed) if a.list else "\n\n".join(f"- {line}" for line in differences))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m common.summary", description="Write summary.md for a runs folder.")
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--task", action="append", required=True,
                   help="a task's study module, e.g. nli.study, or ser.study:study,leak-free-random for some of its rows")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    missing = write_summary(a.out, a.task, a.seeds, a.smoke)
    print(f"wrote {a.out / 'summary.md'}" + (f"; missing: {', '.join(missing)}" if missing else ""))


if __name__ == "__main__":
    main()
