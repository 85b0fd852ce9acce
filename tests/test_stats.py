"""Which differences are real (common/stats.py): bootstrap intervals, McNemar's exact test and
Holm's correction on hand-made predictions with known answers; one rule for absent classes
(common/metrics.py)."""
from math import comb

import numpy as np
import pytest

from common.metrics import report_text, summarize
from common.stats import accuracy_interval, holm, intervals, mcnemar, paired


def test_an_interval_holds_the_estimate_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 800):
        true = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.7, true, (true + 1) % 3)  # about 70% right
        figures, ci = summarize(true, pred, ["a", "b", "c"]), intervals(true, pred, 3)
        for k in ("accuracy", "uar", "macro_f1"):
            assert ci[k][0] <= figures[k] <= ci[k][1], (n, k)
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
        assert intervals(true, pred, 3) == ci  # seeded: the same predictions, the same interval
    assert widths[1] < widths[0] / 2  # 16 times the items: about a quarter of the width
    assert accuracy_interval(np.ones(30)) == [1.0, 1.0]
    # several seeds on the same items: the interval of the seed-averaged figure
    true = np.array([0, 1, 2, 0, 1, 2] * 10)
    seeds = np.stack([true, np.where(np.arange(60) % 4 == 0, (true + 1) % 3, true)])
    both = intervals(true, seeds, 3)
    assert both["accuracy"][0] <= (1 + 0.75) / 2 <= both["accuracy"][1]


def test_mcnemar_and_holm_give_the_known_p_values():
    a = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8, dtype=bool)  # 10 only A right, 2 only B right
    b = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8, dtype=bool)
    exact = 2 * sum(comb(12, k) for k in range(3)) / 2**12  # two-sided binomial, 2 of 12 at p = 1/2
    result = mcnemar(a, b)
    assert (result["only_a"], result["only_b"]) == (10, 2) and result["p"] == pytest.approx(exact)  # 0.0386
    assert mcnemar(a, a)["p"] == 1.0  # no disagreement: nothing to test
    diff = paired(a, b)
    assert diff["difference"] == pytest.approx(8 / 50) and diff["interval"][0] <= 0.16 <= diff["interval"][1]
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])


def test_one_rule_for_a_class_the_split_does_not_hold():
    true, pred = [0, 0, 1, 1], [0, 1, 1, 1]  # class 2 absent from the split
    m = summarize(true, pred, ["x", "y", "z"])
    recall = (0.5 + 1.0) / 2
    f1 = (2 / 3 + 0.8) / 2
    assert m["uar"] == pytest.approx(recall) and m["macro_f1"] == pytest.approx(f1) and m["absent"] == ["z"]
    text = report_text(true, pred, ["x", "y", "z"])
    assert "macro averages over the 2 classes this split holds; absent: z" in text
    macro = next(line for line in text.splitlines() if line.strip().startswith("macro avg"))
    assert f"{recall:.4f}" in macro and f"{f1:.4f}" in macro
