"""PNG plots for both tasks (matplotlib, Agg backend). Margins are set in inches from what each
plot holds (`margins`): tight_layout measured every text again and took a third of each plot's time."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.files import atomic_write  # noqa: E402


def save(fig, path: Path) -> None:
    """Write the figure as a PNG atomically, then free it."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def margins(fig, left: float, right: float, bottom: float, top: float, wspace: float | None = None) -> None:
    """Subplot margins in inches; `wspace` as a fraction of an axis's width."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, wspace=wspace)


def label_inches(names, rotated: bool = False) -> float:
    """About how much room tick labels of these names take, in inches (less across when rotated)."""
    longest = max((len(str(n)) for n in names), default=1)
    return 0.2 + 0.075 * longest * (0.75 if rotated else 1.0)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Losses (left) and accuracies (right) per epoch."""
    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    a.plot(ep, [r["val_loss"] for r in history], "o-", label="validation")
    a.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    if "train_accuracy" in history[0]:
        b.plot(ep, [r["train_accuracy"] for r in history], "o-", label="train")
    b.plot(ep, [r["val_accuracy"] for r in history], "o-", label="validation")
    b.plot(ep, [r["test_accuracy"] for r in history], "o--", label="test (reported only)")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_xticks(ep)
    fig.suptitle(title)
    margins(fig, left=0.75, right=0.2, bottom=0.55, top=0.75, wspace=0.25)
    save(fig, path)


def plot_confusion(cm: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """Counts in each cell; colour by the row-normalised rate so classes of any size compare."""
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.0 * len(names) + 2))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    margins(fig, left=label_inches(names) + 0.35, right=0.2, bottom=label_inches(names, True) + 0.45, top=0.45)
    save(fig, path)


def plot_histograms(series: dict, path: Path, xlabel: str, title: str) -> None:
    """One histogram per named series, side by side."""
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.8), squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items()):
        lo, hi = min(values), max(values)
        integers = all(float(v).is_integer() for v in values) and hi - lo <= 80
        bins = np.arange(lo, hi + 2) - 0.5 if integers else 50  # one bar per token count when they fit
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
        ax.set(xlabel=xlabel, ylabel="count", title=f"{name} (max {max(values):g}, mean {np.mean(values):.1f})")
    fig.suptitle(title)
    margins(fig, left=0.75, right=0.2, bottom=0.55, top=0.75, wspace=0.3)
    save(fig, path)


def plot_counts(series: dict[str, dict[str, int]], path: Path, title: str, ylabel: str) -> None:
    """Grouped bars: one group per label, one bar per named series (e.g. splits), counts on top."""
    names = list(next(iter(series.values())))
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) * max(1, len(series) / 2) + 3, 4.2))
    for k, (label, counts) in enumerate(series.items()):
        bars = ax.bar(x - 0.4 + width * (k + 0.5), [counts[n] for n in names], width, label=label)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, names, rotation=30, ha="right")
    top = max(max(c.values()) for c in series.values())
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1.3 * top))
    ax.legend(loc="upper right", ncols=min(3, len(series)), fontsize=8)
    margins(fig, left=0.75, right=0.2, bottom=label_inches(names, True) + 0.1, top=0.4)
    save(fig, path)


def plot_summary(points: list, path: Path, title: str) -> None:
    """One row per (label, ours, [low, high], the study's or None): ours with its interval, the study's a cross."""
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * len(points)))
    y = np.arange(len(points))[::-1]
    for yi, (label, ours, (low, high), study) in zip(y, points):
        if np.isfinite(low) and np.isfinite(high):
            ax.plot([low, high], [yi, yi], color="tab:blue", lw=2)
        ax.plot(ours, yi, "o", color="tab:blue")
        if study is not None:
            ax.plot(study, yi, "x", color="tab:red", ms=8, mew=2)
    ax.plot([], [], "o-", color="tab:blue", label="ours (95% interval)")
    ax.plot([], [], "x", color="tab:red", label="the study's")
    ax.set_yticks(y, [p[0] for p in points])
    ax.set(xlabel="test accuracy", xlim=(0, 1))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10, pad=22)
    margins(fig, label_inches([p[0] for p in points]), 0.2, 0.6, 0.6)
    save(fig, path)
