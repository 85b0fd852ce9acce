"""The NLI command line end to end, in-process (`main(argv)`), on a tiny BERT and generated data."""
import csv
import json

import matplotlib.image
import pytest
import torch
from safetensors.torch import load_file

from nli import predict
from nli.data import Encoded, encode, read_split
from nli.evaluate import pair_logits
from nli.model import load_classifier
from nli.train import main
from tests.conftest import interrupt_at_epoch


def run(model, data, out, *extra):
    main(["--model", str(model), "--data-dir", str(data), "--out", str(out), "--epochs", "1", *map(str, extra)])
    return out


def weights(out):
    return load_file(out / "model" / "model.safetensors")


def test_end_to_end_writes_every_output(tiny_bert, farstail_dir, tmp_path, capsys):
    out = run(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2, "--prune-heads", 0.5, "--freeze", 1,
              "--keep-layers", 3)
    for name in ("config.json", "train.log", "steps.csv", "history.csv", "metrics.json", "report.txt", "curves.png",
                 "confusion_matrix.png", "token_lengths.png", "model/config.json", "model/model.safetensors",
                 "model/tokenizer.json"):
        assert (out / name).exists(), name
    assert not list(out.glob("checkpoint*")) and not list(out.glob(".*.tmp"))
    for png in ("curves.png", "confusion_matrix.png", "token_lengths.png"):
        assert matplotlib.image.imread(out / png).shape[0] > 100
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "test_accuracy",
                            "seconds", "items_per_s", "warmup_seconds", "items_per_s_steady"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "nli" and m["experiment"] == "keep3-prune0.5-freeze1" and m["epochs"] == 2
    assert set(m["test"]["per_class"]) == {"entailment", "contradiction", "neutral"}
    assert m["test"]["per_class"]["neutral"]["support"] == 8
    assert set(m["test_subsets"]) == {"hard_hypothesis", "easy_hypothesis", "hard_overlap", "easy_overlap"}
    assert set(m["token_stats"]) == {"max_premise_tokens", "max_hypothesis_tokens", "truncated_pairs"}
    assert m["params"]["trainable"] < m["params"]["total"] and m["best_epoch"] in (1, 2)
    assert m["val"]["accuracy"] == pytest.approx(float(rows[-1]["val_accuracy"]), abs=1e-6)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["derived"]["precision"] == "fp32" and "git_commit" in cfg["run_info"]
    assert cfg["derived"]["cuda_graphs"] == "off (no CUDA device)" and m["speed"]["cuda_graphs"] is False
    steps = list(csv.DictReader(open(out / "steps.csv")))
    assert [int(r["step"]) for r in steps] == [3, 6]  # 48 pairs, batch 16: 3 steps an epoch, read at its end
    assert all(float(r["grad_norm"]) > 0 and float(r["lr"]) > 0 for r in steps)
    assert sum(map(len, cfg["derived"]["pruned_heads"].values())) == 6  # half of 3 layers x 4 heads
    report = (out / "report.txt").read_text()
    assert "contradiction" in report and "confusion matrix" in report and "masked 50%" in report
    assert "epoch 2:" in (out / "train.log").read_text()

    # predict loads the shortened, pruned model and agrees with it
    capsys.readouterr()
    predict.main(["--model", str(out / "model"), "کتاب دانشجو است.", "کتاب نیست."])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] in ("entailment", "contradiction", "neutral") and len(lines) == 4
    predict.main(["--model", str(out / "model"), "--tsv", str(farstail_dir / "Val-word.csv"),
                  "--output", str(tmp_path / "pred.tsv")])
    preds = list(csv.DictReader(open(tmp_path / "pred.tsv", encoding="utf-8"), delimiter="\t"))
    assert len(preds) == 24 and all(abs(sum(float(r[f"p_{n}"]) for n in
                                            ("entailment", "contradiction", "neutral")) - 1) < 1e-3 for r in preds)


def test_training_learns_the_generated_rule(tmp_path):
    from nli.synthetic import write_farstail, write_tiny_bert
    write_farstail(tmp_path / "data", rows=(240, 80, 80))
    write_tiny_bert(tmp_path / "model", layers=2, hidden=64)
    out = run(tmp_path / "model", tmp_path / "data", tmp_path / "run", "--epochs", 6, "--lr", 2e-3)
    m = json.loads((out / "metrics.json").read_text())
    assert m["val"]["accuracy"] > 0.55 and m["train"]["loss"] < 0.9  # chance: 1/3 and ln 3 = 1.10


def test_frozen_layers_do_not_change(tiny_bert, farstail_dir, tmp_path):
    before = load_file(tiny_bert / "model.safetensors")
    after = weights(run(tiny_bert, farstail_dir, tmp_path / "run", "--freeze", 2, "--lr", 1e-3))
    for name, value in after.items():
        if ".encoder.layer.0." in name or ".encoder.layer.1." in name:
            assert torch.equal(value, before[name]), name
    for layer in (2, 3):
        assert not torch.equal(after[f"bert.encoder.layer.{layer}.attention.self.query.weight"],
                               before[f"bert.encoder.layer.{layer}.attention.self.query.weight"])
    assert not torch.equal(after["bert.embeddings.word_embeddings.weight"], before["bert.embeddings.word_embeddings.weight"])


def test_grad_accum_equals_larger_batch(tiny_bert_no_dropout, farstail_dir, tmp_path):
    a = weights(run(tiny_bert_no_dropout, farstail_dir, tmp_path / "a", "--batch-size", 8, "--lr", 1e-3, "--amp", "off"))
    b = weights(run(tiny_bert_no_dropout, farstail_dir, tmp_path / "b", "--batch-size", 4, "--grad-accum", 2,
                    "--lr", 1e-3, "--amp", "off"))
    c = weights(run(tiny_bert_no_dropout, farstail_dir, tmp_path / "c", "--batch-size", 4, "--lr", 1e-3, "--amp", "off"))
    name = "bert.encoder.layer.1.output.dense.weight"
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not torch.allclose(a[name], c[name], atol=1e-6)  # and batch 4 alone is a different run




def test_resume_after_interruption_equals_uninterrupted_run(tiny_bert, farstail_dir, tmp_path, monkeypatch):
    args = ("--epochs", 3, "--lr", 1e-3, "--seed", 5)
    whole = weights(run(tiny_bert, farstail_dir, tmp_path / "whole", *args))
    undo = interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(SystemExit, match="^130$"):  # "interrupted; resume with --resume"
        run(tiny_bert, farstail_dir, tmp_path / "cut", *args)
    assert (tmp_path / "cut" / "checkpoint.json").exists() and not (tmp_path / "cut" / "metrics.json").exists()
    undo()
    with pytest.raises(SystemExit) as e:  # a non-empty --out is refused without --resume
        run(tiny_bert, farstail_dir, tmp_path / "cut", *args)
    assert e.value.code == 2
    with open(tmp_path / "cut" / "steps.csv", "a") as f:  # the row of an epoch killed before its checkpoint
        f.write("2,6,0.0005,1.1,0.3,0.5,100.0,\n")
    resumed = weights(run(tiny_bert, farstail_dir, tmp_path / "cut", *args, "--resume"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    hist = list(csv.DictReader(open(tmp_path / "cut" / "history.csv")))
    assert [r["epoch"] for r in hist] == ["1", "2", "3"]
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "cut" / "steps.csv"))]
    assert steps == sorted(set(steps))  # the rows of the killed epoch were dropped, not repeated
    assert "resuming after epoch 1" in (tmp_path / "cut" / "train.log").read_text()


def test_resume_without_checkpoint_starts_over_and_other_arguments_are_refused(
        tiny_bert, farstail_dir, tmp_path, monkeypatch, capsys):
    undo = interrupt_at_epoch(monkeypatch, 1)  # killed before any checkpoint was written
    with pytest.raises(SystemExit, match="^130$"):  # "interrupted; resume with --resume"
        run(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2)
    assert not (tmp_path / "run" / "checkpoint.json").exists()
    undo()
    interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(SystemExit, match="^130$"):  # "interrupted; resume with --resume"
        run(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2, "--resume")
    assert (tmp_path / "run" / "checkpoint.json").exists()
    with pytest.raises(SystemExit) as e:
        run(tiny_bert, farstail_dir, tmp_path / "run", "--epochs", 2, "--resume", "--lr", 1e-4)
    assert e.value.code == 2 and "--lr" in capsys.readouterr().err


def test_eval_logits_do_not_depend_on_batchmates(tiny_bert, farstail_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = load_classifier(str(tiny_bert), ["e", "c", "n"])
    data = encode(tok, read_split(farstail_dir / "Train-word.csv"), 200)
    lengths = data.lengths.tolist()
    short, longest = lengths.index(min(lengths)), lengths.index(max(lengths))
    subset = lambda idx: Encoded(data.ids[idx], data.types[idx], data.lengths[idx], data.label_ids[idx],  # noqa: E731
                                 data.max_length)
    alone = pair_logits(model, subset([short]), torch.device("cpu"), None)
    beside = pair_logits(model, subset([short, longest]), torch.device("cpu"), None)
    assert lengths[longest] > lengths[short] + 10
    assert torch.allclose(alone[0], beside[0], atol=1e-5)


def test_bad_label_in_cli_exits_2_naming_the_line(tiny_bert, farstail_dir, tmp_path, capsys):
    import shutil
    shutil.copytree(farstail_dir, tmp_path / "data")
    path = tmp_path / "data" / "Val-word.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][:-1] + "z"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        run(tiny_bert, tmp_path / "data", tmp_path / "run")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Val-word.csv, line 5: unknown label 'z'" in err and "Traceback" not in err


def test_bad_flag_combination_is_refused(tiny_bert, farstail_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(tiny_bert, farstail_dir, tmp_path / "run", "--keep-layers", 2, "--freeze", 3)
    assert e.value.code == 2 and "--freeze 3" in capsys.readouterr().err


def test_host_built_masks_give_the_same_logits_as_transformers_own(tiny_bert, farstail_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from nli.data import collate
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    data = encode(tok, read_split(farstail_dir / "Train-word.csv"), 200)
    cpu = torch.device("cpu")
    sdpa = load_classifier(str(tiny_bert), ["e", "c", "n"]).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    idx = sorted(range(len(data)), key=lambda i: int(data.lengths[i]))[::6]  # very different lengths
    four_d, two_d = collate(data, idx, cpu, sdpa_mask=True), collate(data, idx, cpu, sdpa_mask=False)
    assert four_d["attention_mask"].dim() == 4 and two_d["attention_mask"].dim() == 2
    assert four_d["input_ids"].shape[1] % 16 == 0  # padded to a bucket
    with torch.no_grad():
        a = sdpa(**{k: v for k, v in four_d.items() if k not in ("label_ids", "weights")}).logits
        b = sdpa(**{k: v for k, v in two_d.items() if k not in ("label_ids", "weights")}).logits
    assert torch.allclose(a, b, atol=1e-6)
    eager = AutoModelForSequenceClassification.from_pretrained(tiny_bert, attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    le = pair_logits(eager, data, cpu, None)
    ls = pair_logits(sdpa, data, cpu, None)
    assert torch.allclose(le, ls, atol=1e-5)
