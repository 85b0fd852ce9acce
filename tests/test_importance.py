"""Head importance (Michel et al. 2019) on a tiny BERT: the gates change nothing at 1, each score
is the gradient a finite difference measures, importance picks the lowest heads, and the pruning
curve is reproducible."""
import csv
import json

import pytest
import torch
from transformers import AutoTokenizer

from common.outdir import KEEP, contents, owned
from nli import prune_curve
from nli.config import Experiment
from nli.data import LABEL_NAMES, collate, encode, read_split
from nli.importance import batch_loss, head_gates, head_importance, raw_importance
from nli.model import apply_experiment, choose_by_importance, keep_layers, load_classifier, prune_heads
from nli.train import main as nli_main

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tiny_bert_no_dropout, farstail_dir):
    tok = AutoTokenizer.from_pretrained(tiny_bert_no_dropout)
    data = encode(tok, read_split(farstail_dir / "Train-word.csv"), 200)
    torch.manual_seed(0)
    model = load_classifier(str(tiny_bert_no_dropout), LABEL_NAMES).eval()
    return model, data


def test_gates_at_one_change_no_logit(setup):
    model, data = setup
    batch = collate(data, list(range(8)), CPU)
    inputs = {k: v for k, v in batch.items() if k not in ("label_ids", "weights")}
    with torch.no_grad():
        plain = model(**inputs).logits
    with head_gates(model) as gates:
        assert [g.numel() for g in gates] == [4, 4, 4, 4]
        with torch.no_grad():
            gated = model(**inputs).logits
    assert torch.equal(plain, gated)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)  # hooks gone


def test_each_score_is_the_mean_absolute_gradient_a_finite_difference_measures(setup):
    """Central differences of each batch's loss in one gate (ε = 1e-3, fp32): the absolute slopes,
    averaged over batches, match the autograd scores within 1e-4 + 1% (the difference's own
    rounding error is about 1e-5)."""
    model, data = setup
    batches = [list(range(0, 8)), list(range(8, 16))]
    raw = raw_importance(model, data, batches, CPU, None)
    eps = 1e-3
    with torch.no_grad(), head_gates(model) as gates:
        for layer, gate in enumerate(gates):
            for h in range(len(gate)):
                slopes = []
                for idx in batches:
                    b = collate(data, idx, CPU)
                    gate[h] = 1 + eps
                    up = batch_loss(model, b, CPU, None)
                    gate[h] = 1 - eps
                    down = batch_loss(model, b, CPU, None)
                    gate[h] = 1.0
                    slopes.append(abs((up - down).item()) / (2 * eps))
                fd = sum(slopes) / len(slopes)
                assert raw[layer][h].item() == pytest.approx(fd, rel=1e-2, abs=1e-4), (layer, h)


def test_scores_of_pruned_and_shortened_models_use_original_head_numbers(tiny_bert_no_dropout, setup):
    _, data = setup
    model = load_classifier(str(tiny_bert_no_dropout), LABEL_NAMES)
    keep_layers(model, 3)
    prune_heads(model, {0: [1, 2], 2: [0]})
    scores = head_importance(model, data, [list(range(8))], CPU, None)
    assert list(scores) == [0, 1, 2]
    assert list(scores[0]) == [0, 3] and list(scores[1]) == [0, 1, 2, 3] and list(scores[2]) == [1, 2, 3]
    for row in scores.values():  # normalised within each layer
        assert sum(v * v for v in row.values()) == pytest.approx(1.0)
    prune_heads(model, {1: [3]})  # a pruned model can lose more, still in the original numbering
    assert model.config.pruned_heads == {"0": [1, 2], "1": [3], "2": [0]}


def test_prune_by_importance_removes_the_lowest_heads_and_reloads(tiny_bert_no_dropout, setup, tmp_path):
    _, data = setup
    model = load_classifier(str(tiny_bert_no_dropout), LABEL_NAMES).eval()
    seen = {}

    def importance(m):
        seen.update(head_importance(m, data, [list(range(8)), list(range(8, 16))], CPU, None))
        return seen
    done = apply_experiment(model, Experiment(prune_heads=0.5, prune_by="importance"), seed=0, importance=importance)
    heads, scores = done.pruned_heads, done.head_scores
    assert scores == seen and sum(map(len, heads.values())) == 8
    assert heads == choose_by_importance(scores, 8)
    removed = [scores[layer][h] for layer, hs in heads.items() for h in hs]
    kept = [v for layer, row in scores.items() for h, v in row.items() if h not in heads.get(layer, [])]
    layers_left_one = [layer for layer, hs in heads.items() if len(hs) == 3]
    if not layers_left_one:  # with no layer down to its last head, the cut is exact
        assert max(removed) <= min(kept)
    model.save_pretrained(tmp_path / "m")
    again = load_classifier(str(tmp_path / "m")).eval()
    inputs = {k: v for k, v in collate(data, list(range(6)), CPU).items() if k not in ("label_ids", "weights")}
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, model(**inputs).logits)


def test_prune_by_importance_on_the_command_line_records_scores(tiny_bert, farstail_dir, tmp_path):
    nli_main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(tmp_path / "run"),
              "--epochs", "1", "--prune-heads", "0.5", "--prune-by", "importance", "--importance-batches", "2"])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["derived"]
    scores = {int(k): {int(h): v for h, v in row.items()} for k, row in cfg["head_importance"].items()}
    assert {int(k): v for k, v in cfg["pruned_heads"].items()} == choose_by_importance(scores, 8)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["experiment"] == "prune0.5-importance"
    assert "head importance before fine-tuning" in (tmp_path / "run" / "report.txt").read_text()


def test_pruning_curve_starts_at_the_model_and_random_draws_repeat(tiny_bert, farstail_dir, tmp_path):
    nli_main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(tmp_path / "run"),
              "--epochs", "2", "--lr", "3e-3"])
    own = json.loads((tmp_path / "run" / "metrics.json").read_text())
    args = ["--model", str(tmp_path / "run" / "model"), "--data-dir", str(farstail_dir), "--fractions", "0.25,0.5",
            "--seeds", "2", "--importance-batches", "2", "--iterative"]
    rows = []
    for k in (1, 2):
        prune_curve.main([*args, "--out", str(tmp_path / f"curve{k}")])
        rows.append(list(csv.DictReader(open(tmp_path / f"curve{k}" / "prune_curve.csv"))))
        for f in ("prune_curve.png", "head_importance.png", "report.txt", "metrics.json", "config.json"):
            assert (tmp_path / f"curve{k}" / f).exists(), f
        assert all(owned(p) for p in contents(tmp_path / f"curve{k}") if p.name not in KEEP)  # --overwrite's names
    whole = rows[0][0]
    assert whole["method"] == "none" and float(whole["fraction"]) == 0.0
    assert float(whole["test_accuracy"]) == pytest.approx(own["test"]["accuracy"])
    assert float(whole["val_accuracy"]) == pytest.approx(own["val"]["accuracy"])
    random_rows = lambda rs: [(r["seed"], r["fraction"], r["heads_removed"], r["test_accuracy"])  # noqa: E731
                              for r in rs if r["method"] == "random"]
    assert random_rows(rows[0]) == random_rows(rows[1]) and len(random_rows(rows[0])) == 4
    assert {r["method"] for r in rows[0]} == {"none", "importance", "importance-iterative", "random"}
    m = json.loads((tmp_path / "curve1" / "metrics.json").read_text())
    assert set(m["head_budget"]) == {"importance", "importance-iterative", "random"}
    assert int(rows[0][-1]["params"]) < int(whole["params"])  # fewer heads, fewer parameters


def test_pruning_curve_of_a_missing_model_is_one_line(farstail_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        prune_curve.main(["--model", str(tmp_path / "nowhere"), "--data-dir", str(farstail_dir),
                          "--out", str(tmp_path / "curve")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no such folder" in err and "Traceback" not in err
    assert not (tmp_path / "curve" / "train.log").exists()


def test_pruning_curve_feeds_a_hypothesis_only_model_the_hypothesis_alone(tiny_bert, farstail_dir, tmp_path):
    """The whole model's row is the run's own figures only when pairs are encoded as it was trained."""
    nli_main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(tmp_path / "run"),
              "--epochs", "8", "--batch-size", "8", "--lr", "3e-3", "--hypothesis-only", "--max-length", "24"])
    own = json.loads((tmp_path / "run" / "metrics.json").read_text())
    prune_curve.main(["--model", str(tmp_path / "run"), "--data-dir", str(farstail_dir), "--fractions", "0.25",
                      "--seeds", "1", "--importance-batches", "1"])
    whole = json.loads((tmp_path / "run" / "prune_curve" / "metrics.json").read_text())["whole"]
    assert whole["val_accuracy"] == pytest.approx(own["val"]["accuracy"])
    assert whole["test_accuracy"] == pytest.approx(own["test"]["accuracy"])
    assert "the hypothesis alone" in (tmp_path / "run" / "prune_curve" / "report.txt").read_text()
    # and with the run's own --max-length (recorded in the run's config.json), not a default of its own
    assert json.loads((tmp_path / "run" / "prune_curve" / "config.json").read_text())["args"]["max_length"] == 24


def test_the_pruning_budget_is_chosen_on_validation():
    from nli.prune_curve import budget
    whole = {"val_accuracy": 0.80, "test_accuracy": 0.70}
    rows = [{"fraction": 0.1, "heads_removed": 14, "val_accuracy": 0.80, "test_accuracy": 0.60},
            {"fraction": 0.2, "heads_removed": 29, "val_accuracy": 0.795, "test_accuracy": 0.71},
            {"fraction": 0.3, "heads_removed": 43, "val_accuracy": 0.70, "test_accuracy": 0.70}]
    chosen = budget(rows, whole)  # test falls at 0.1, but test never chooses: validation holds until 0.2
    assert chosen == {"heads": 29, "fraction": 0.2, "val_accuracy": 0.795, "test_accuracy": 0.71}
