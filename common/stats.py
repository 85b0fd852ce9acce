"""Which differences are larger than the noise (docs/statistics.md): seeded percentile bootstrap
intervals (absent classes as in common/metrics.py, in every resample), McNemar's exact test with the
paired interval of an accuracy difference, and Holm's correction."""
from itertools import accumulate

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
MAJORITY = 0.5  # seed-averaged McNemar: right when right in at least this share of the seeds (ties: right)
SEED = 0  # the bootstrap's own seed: an interval is a function of the predictions alone
MIN_ITEMS = 2  # one item resamples to itself: a zero-width "interval" that says nothing, so none is given
CHUNK = 500  # resamples drawn at once (memory: CHUNK × items × seeds booleans per class)


def interval_text(bounds, signed: bool = False) -> str:
    """"[0.6800, 0.7400]" (signed: "[-0.0100, +0.0300]"), or a word where no interval was computed."""
    low, high = bounds
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"[no interval: fewer than {MIN_ITEMS} items]"
    f = "+.4f" if signed else ".4f"
    return f"[{low:{f}}, {high:{f}}]"


def _resamples(n_items: int, seed: int = SEED):
    """Index matrices of resampled items, CHUNK rows at a time, RESAMPLES rows in all."""
    rng = np.random.default_rng(seed)
    for start in range(0, RESAMPLES, CHUNK):
        yield rng.integers(0, n_items, size=(min(CHUNK, RESAMPLES - start), n_items))


def _percentiles(values: np.ndarray) -> list[float]:
    tail = 100 * (1 - LEVEL) / 2
    values = values[np.isfinite(values)]
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])] if len(values) else [float("nan")] * 2


def _figures(true: np.ndarray, preds: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Accuracy, UAR and macro F1 of R resamples (`true` (R, n), `preds` (seeds, R, n)), averaged over seeds."""
    acc = (preds == true[None]).mean(-1).mean(0)
    recall, f1 = [], []
    for c in range(n_classes):
        is_c, said_c = true == c, preds == c
        support = is_c.sum(-1)  # (R,)
        tp = (said_c & is_c[None]).sum(-1)  # (S, R)
        predicted = said_c.sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            recall.append(np.where(support > 0, tp / support, np.nan))  # absent in a resample: left out
            f1.append(np.where(support > 0, 2 * tp / (support + predicted), np.nan))
    with np.errstate(invalid="ignore"):
        return {"accuracy": acc, "uar": np.nanmean(np.stack(recall), axis=0).mean(0),
                "macro_f1": np.nanmean(np.stack(f1), axis=0).mean(0)}


def intervals(true, preds, n_classes: int) -> dict[str, list[float]]:
    """95% bootstrap intervals of accuracy, UAR and macro F1 of (n,) or (seeds, n) predictions."""
    return seed_intervals([true], [preds], n_classes)


def seed_intervals(trues: list, preds: list, n_classes: int) -> dict[str, list[float]]:
    """The intervals of the seed-averaged figures when the seeds tested different items, each seed's
    resampled against its own labels (`trues[s]`; `preds[s]`: (n_s,) or (k, n_s)); nan under MIN_ITEMS."""
    trues, preds = [np.asarray(t) for t in trues], [np.atleast_2d(np.asarray(p)) for p in preds]
    if min(len(t) for t in trues) < MIN_ITEMS:
        return {k: [float("nan")] * 2 for k in ("accuracy", "uar", "macro_f1")}
    values = {"accuracy": [], "uar": [], "macro_f1": []}
    for draws in zip(*(_resamples(len(t), SEED + s) for s, t in enumerate(trues))):
        per_seed = [_figures(t[idx], p[:, idx], n_classes) for t, p, idx in zip(trues, preds, draws)]
        for k in values:
            values[k].append(np.mean([f[k] for f in per_seed], axis=0))
    return {k: _percentiles(np.concatenate(v)) for k, v in values.items()}


def accuracy_interval(correct) -> list[float]:
    """95% bootstrap interval of the mean of per-item correctness (0/1, or seed-averaged)."""
    correct = np.asarray(correct, dtype=float)
    if len(correct) < MIN_ITEMS:
        return [float("nan")] * 2
    return _percentiles(np.concatenate([correct[idx].mean(-1) for idx in _resamples(len(correct))]))


def mcnemar(correct_a, correct_b) -> dict:
    """The exact McNemar test: a two-sided binomial test on the items only one model gets right."""
    from scipy.stats import binomtest
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    return {"only_a": b, "only_b": c, "p": float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0}


def paired(correct_a, correct_b) -> dict:
    """A against B on the same items: accuracy difference (A − B), its paired interval, McNemar's test."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    diff = a - b
    return {"difference": float(diff.mean()), "interval": accuracy_interval(diff),
            **mcnemar(a >= MAJORITY, b >= MAJORITY)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = accumulate((min(1.0, (len(pvalues) - rank) * pvalues[i]) for rank, i in enumerate(order)), max)
    return [p for _, p in sorted(zip(order, adjusted))]
