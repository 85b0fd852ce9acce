"""Which differences are larger than the noise, for both tasks (none of it knows a task):

- `intervals`: 95% confidence intervals of accuracy, UAR and macro F1 by a percentile bootstrap
  over the test items (RESAMPLES resamples of the items with replacement, a fixed seed, so the
  same predictions always give the same interval). Given the predictions of several seeds on the
  same items, each resample averages the figure over the seeds: the interval of the seed-averaged
  figure. UAR and macro F1 follow common/metrics.py's rule for absent classes in every resample.
- `paired`: two models on the same test items: the exact McNemar test (a two-sided binomial test,
  `scipy.stats.binomtest`, on the items one gets right and the other wrong) and the paired
  bootstrap interval of the accuracy difference.
- `holm`: Holm's step-down correction of p-values for several comparisons made together.
"""
import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95
SEED = 0  # the bootstrap's own seed: an interval is a function of the predictions alone
CHUNK = 500  # resamples drawn at once (memory: CHUNK × items × seeds booleans per class)


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
    """Accuracy, UAR and macro F1 of each resample: `true` (R, n) labels and `preds` (S, R, n)
    predictions of S seeds; figures averaged over the seeds, one per resample."""
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
        uar = np.nanmean(np.stack(recall), axis=0).mean(0)
        macro_f1 = np.nanmean(np.stack(f1), axis=0).mean(0)
    return {"accuracy": acc, "uar": uar, "macro_f1": macro_f1}


def intervals(true, preds, n_classes: int) -> dict[str, list[float]]:
    """95% bootstrap intervals of accuracy, UAR and macro F1 over the test items. `true`: (n,)
    label ids; `preds`: (n,) predictions, or (seeds, n) predictions of several seeds."""
    true, preds = np.asarray(true), np.atleast_2d(np.asarray(preds))
    values = {"accuracy": [], "uar": [], "macro_f1": []}
    for idx in _resamples(len(true)):
        for k, v in _figures(true[idx], preds[:, idx], n_classes).items():
            values[k].append(v)
    return {k: _percentiles(np.concatenate(v)) for k, v in values.items()}


def accuracy_interval(correct) -> list[float]:
    """95% bootstrap interval of the mean of per-item correctness (0/1, or seed-averaged)."""
    correct = np.asarray(correct, dtype=float)
    if not len(correct):
        return [float("nan")] * 2
    return _percentiles(np.concatenate([correct[idx].mean(-1) for idx in _resamples(len(correct))]))


def mcnemar(correct_a, correct_b) -> dict:
    """The exact McNemar test of two models on the same items: b items only A gets right, c only
    B; under no difference each of the b + c disagreements goes either way with probability 1/2,
    so p is the two-sided binomial test of b successes in b + c trials."""
    from scipy.stats import binomtest
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    return {"only_a": b, "only_b": c, "p": float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0}


def paired(correct_a, correct_b) -> dict:
    """A against B on the same items: accuracy difference (A − B), its paired bootstrap interval,
    and McNemar's exact test. Per-item correctness may be averaged over seeds (then McNemar takes
    the items each gets right by majority)."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    diff = a - b
    return {"difference": float(diff.mean()), "interval": accuracy_interval(diff),
            **mcnemar(a >= 0.5, b >= 0.5)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (the family-wise error rate stays below the level):
    the k-th smallest of m p-values is multiplied by m − k + 1, and adjusted values never fall."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
