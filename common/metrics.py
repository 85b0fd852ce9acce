"""Classification figures from labels and predictions, both tasks (numpy only). A class a split does not hold
is left out of every macro figure (docs/ser.md, "Metrics"); one present but never predicted has precision 0."""
import numpy as np


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Rows: true label; columns: predicted label."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1, support) per class of a confusion matrix; NaN where undefined."""
    tp, support, predicted = np.diag(cm).astype(float), cm.sum(1).astype(float), cm.sum(0).astype(float)
    nan = float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.where(support > 0, 0.0, nan))
        recall = np.where(support > 0, tp / support, nan)
        f1 = np.where(support > 0, 2 * tp / (support + predicted), nan)
    return precision, recall, f1, support


def summarize(y_true, y_pred, label_names: list[str], loss: float | None = None) -> dict:
    """accuracy, UAR, loss, macro F1, per-class figures keyed by label name, and the `absent` classes."""
    cm = confusion(y_true, y_pred, len(label_names))
    p, r, f, s = per_class(cm)
    present = s > 0
    nan = float("nan")
    out = {"accuracy": float(np.trace(cm) / len(y_true)) if len(y_true) else nan,
           "uar": float(r[present].mean()) if present.any() else nan}
    if loss is not None:
        out["loss"] = float(loss)
    out["macro_f1"] = float(f[present].mean()) if present.any() else nan
    defined = lambda v: None if np.isnan(v) else float(v)  # noqa: E731
    out["per_class"] = {n: {"precision": defined(p[i]), "recall": defined(r[i]), "f1": defined(f[i]),
                            "support": int(s[i])} for i, n in enumerate(label_names)}
    out["absent"] = [n for i, n in enumerate(label_names) if not present[i]]
    return out


def report_text(y_true, y_pred, label_names: list[str]) -> str:
    """A classification report as scikit-learn prints one, then the confusion matrix."""
    cm = confusion(y_true, y_pred, len(label_names))
    p, r, f, s = per_class(cm)
    present = s > 0
    width = max(len("weighted avg"), *(len(n) for n in label_names))
    cell = lambda v: " " * 10 if v is None else f" {'n/a':>9}" if np.isnan(v) else f" {v:>9.4f}"  # noqa: E731
    row = lambda name, values, n: f"{name:>{width}} " + "".join(map(cell, values)) + f" {n:>9}"  # noqa: E731
    lines = [" " * width + " " + "".join(f" {h:>9}" for h in ("precision", "recall", "f1-score", "support")), ""]
    lines += [row(n, (p[i], r[i], f[i]), int(s[i])) for i, n in enumerate(label_names)]
    total = int(s.sum())
    lines += ["", row("accuracy", (None, None, np.trace(cm) / max(total, 1)), total),
              row("macro avg", (p[present].mean(), r[present].mean(), f[present].mean()) if present.any()
                  else (0.0, 0.0, 0.0), total),
              row("weighted avg", tuple(float((v[present] * s[present]).sum() / max(total, 1)) for v in (p, r, f)),
                  total)]
    absent = [n for i, n in enumerate(label_names) if not present[i]]
    if absent:
        lines += ["", f"(macro averages over the {int(present.sum())} classes this split holds; absent: "
                      f"{', '.join(absent)}, whose recall and F1 are undefined: n/a)"]
    cell = max(8, *(len(n) for n in label_names)) + 1
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * cell + "".join(n[:cell - 1].rjust(cell) for n in label_names)]
    lines += [n.ljust(cell) + "".join(str(v).rjust(cell) for v in cm_row) for n, cm_row in zip(label_names, cm)]
    return "\n".join(lines)
