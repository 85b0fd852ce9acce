"""Classification figures from labels and predictions, the same for both tasks."""
import warnings

import numpy as np
from sklearn.metrics import (balanced_accuracy_score, classification_report, confusion_matrix,
                             precision_recall_fscore_support)


def summarize(y_true, y_pred, names: list[str], loss: float | None = None) -> dict:
    """accuracy, UAR (unweighted average recall: the mean recall over the classes present, as
    scikit-learn's balanced_accuracy_score), loss, macro F1 and per-class precision / recall / F1 /
    support, keyed by label name."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    with warnings.catch_warnings():  # a predicted class absent from y_true is fine here
        warnings.simplefilter("ignore")
        uar = float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else float("nan")
    out = {"accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"), "uar": uar}
    if loss is not None:
        out["loss"] = float(loss)
    out["macro_f1"] = float(np.mean(f))
    out["per_class"] = {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                        for i, n in enumerate(names)}
    return out


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Rows: true label; columns: predicted label."""
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def report_text(y_true, y_pred, names: list[str]) -> str:
    """sklearn's classification report with label names, then the confusion matrix as text."""
    rep = classification_report(y_true, y_pred, labels=list(range(len(names))), target_names=names,
                                digits=4, zero_division=0)
    cm = confusion(y_true, y_pred, len(names))
    width = max(8, *(len(n) for n in names)) + 1
    lines = ["confusion matrix (rows: true, columns: predicted)",
             " " * width + "".join(n[:width - 1].rjust(width) for n in names)]
    lines += [n.ljust(width) + "".join(str(v).rjust(width) for v in row) for n, row in zip(names, cm)]
    return rep.rstrip() + "\n\n" + "\n".join(lines)
