"""The study, read line by line: its SER split (the first part of the second split is its test
set, random_state 10), its feature extractor, HF Trainer's logged training loss, and its pruning
as weight masking, each as the study's code did it; and the published figures quoted as published."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sklearn.model_selection import train_test_split

from common.results import logged_like_trainer
from nli.config import Experiment
from nli.data import LABEL_NAMES, collate, encode, load_tokenizer, read_split
from nli.model import apply_experiment, load_classifier, make_masks_permanent, mask_attention_weights
from nli.train import main as nli_main
from ser.splits import Item, Protocol, balance_plan

ROOT = Path(__file__).resolve().parent.parent


def test_the_study_split_takes_its_test_set_from_the_first_part_of_the_second_split():
    labels = ["anger"] * 60 + ["neutral"] * 40 + ["sadness"] * 25  # the study balances first: 180 items
    pool = [Item(i) for i in range(len(labels))] + [Item(s, d) for s, d in balance_plan(labels, 0)]
    train, rest = train_test_split(pool, test_size=0.2, random_state=10)  # as the study's code, line by line
    test, evaluation = train_test_split(rest, test_size=0.5, random_state=10)
    items = Protocol("study").items(labels, [None] * len(labels), seed=0, limit=None)
    assert items["train"] == train and items["test"] == test and items["val"] == evaluation
    assert (len(items["test"]), len(items["val"])) == (18, 18)
    big = [Item(i) for i in range(6354)]  # the study's balanced corpus: 635 test and 636 evaluation items
    _, rest = train_test_split(big, test_size=0.2, random_state=10)
    assert [len(x) for x in train_test_split(rest, test_size=0.5, random_state=10)] == [635, 636]
    # the training seed draws the copies; the split stays the study's (random_state 10) unless --split-seed
    other_seed = Protocol("study").items(labels, [None] * len(labels), seed=1, limit=None)
    assert [it.clip for it in other_seed["test"]] == [it.clip for it in items["test"]]
    assert other_seed["train"] != items["train"]  # (other draws for the copies)
    moved = Protocol("study", split_seed=3).items(labels, [None] * len(labels), seed=0, limit=None)
    assert [it.clip for it in moved["test"]] != [it.clip for it in items["test"]]
    # ours: the split follows --seed unless --split-seed is given
    ours = Protocol("leak-free")
    assert ours.seed_of_split(4) == 4 and Protocol("leak-free", split_seed=9).seed_of_split(4) == 9


def test_the_study_protocol_uses_the_studys_feature_extractor(tiny_hubert, shemo_dir, tmp_path):
    import shutil

    from transformers import Wav2Vec2FeatureExtractor

    from ser.train import main as ser_main
    model = tmp_path / "hubert-with-its-own-extractor"
    shutil.copytree(tiny_hubert, model)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                             return_attention_mask=True).save_pretrained(model)
    runs = {}
    for protocol in ("study", "leak-free"):
        out = tmp_path / protocol
        ser_main(["--model", str(model), "--data-dir", str(shemo_dir), "--out", str(out), "--epochs", "1",
                  "--protocol", protocol, "--limit", "12"] + (["--no-balance"] if protocol == "leak-free" else []))
        runs[protocol] = json.loads((out / "config.json").read_text())
    study = runs["study"]["derived"]
    assert study["feature_extractor"].startswith("the study's: facebook/wav2vec2-base-960h's settings")
    assert study["do_normalize"] is True and study["attention_mask"] is False
    ours = runs["leak-free"]["derived"]
    assert ours["do_normalize"] is False and ours["attention_mask"] is True  # the model's own
    assert runs["study"]["args"]["split_seed"] is None  # (None: the study's random_state 10)


def test_the_training_loss_as_hf_trainer_logs_it(tiny_bert, farstail_dir, tmp_path):
    assert logged_like_trainer([1.0, 3.0, 5.0, 7.0, 9.0], 2) == [{"steps": "1-2", "loss": 2.0},
                                                                 {"steps": "3-4", "loss": 6.0}]
    assert logged_like_trainer([1.0] * 499, 500) == []  # Trainer logs nothing before step 500
    out = tmp_path / "run"  # 48 pairs in batches of 8: 6 steps an epoch, 12 in all, logged every 4
    nli_main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(out), "--epochs", "2",
              "--batch-size", "8", "--lr", "1e-3", "--log-every", "1", "--trainer-logging-steps", "4"])
    per_step = []  # steps.csv's loss is the running mean of the epoch: each step's own mean follows from it
    for epoch in ("1", "2"):
        means = [float(r["loss"]) for r in csv.DictReader(open(out / "steps.csv")) if r["epoch"] == epoch]
        per_step += [k * m - (k - 1) * p for k, (m, p) in enumerate(zip(means, [0.0] + means), start=1)]
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert [w["steps"] for w in train["trainer_logged"]] == ["1-4", "5-8", "9-12"]
    for w, k in zip(train["trainer_logged"], (0, 4, 8)):
        assert w["loss"] == pytest.approx(sum(per_step[k:k + 4]) / 4, abs=1e-4)
    assert train["trainer_logged_last"] == train["trainer_logged"][-1]["loss"]
    assert "training loss as HF Trainer logs it" in (out / "report.txt").read_text()


def test_the_studys_pruning_masks_half_of_every_attention_weight_for_the_whole_run(tiny_bert_no_dropout,
                                                                                   farstail_dir, tmp_path):
    torch.manual_seed(0)
    model = load_classifier(str(tiny_bert_no_dropout), LABEL_NAMES).train()
    done = apply_experiment(model, Experiment(prune_heads=0.5, prune_by="masking"), seed=0)
    assert done.pruned_heads == {} and done.masked_weights["tensors"] == 4 * 5  # q, k, v, output, its LayerNorm
    names = [n for n, _ in model.named_buffers() if n.endswith("weight_mask")]
    assert any("attention.output.LayerNorm" in n for n in names)
    for name in names:  # half of each tensor's entries, up to rounding
        mask = model.get_buffer(name)
        assert abs(int((mask == 0).sum()) - mask.numel() / 2) <= 0.5, name
    masks = {n: model.get_buffer(n).clone() for n in names}
    data = encode(load_tokenizer(str(tiny_bert_no_dropout)), read_split(farstail_dir / "Train-word.csv"), 200)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):  # training: the masked entries stay zero, the others move
        batch = collate(data, list(range(8)), torch.device("cpu"), sdpa_mask=False)
        loss = torch.nn.functional.cross_entropy(model(**{k: v for k, v in batch.items() if k not in (
            "label_ids", "weights")}).logits, batch["label_ids"])
        loss.backward()
        opt.step()
        opt.zero_grad()
    query = model.bert.encoder.layer[0].attention.self.query
    assert torch.equal(query.weight == 0, masks["bert.encoder.layer.0.attention.self.query.weight_mask"] == 0)
    model.eval()
    inputs = {k: v for k, v in collate(data, list(range(6)), torch.device("cpu")).items()
              if k not in ("label_ids", "weights")}
    with torch.no_grad():
        before = model(**inputs).logits
    make_masks_permanent(model)
    model.save_pretrained(tmp_path / "saved")
    again = load_classifier(str(tmp_path / "saved")).eval()
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, before)  # a plain model, zeros in place: the same logits
    with pytest.raises(Exception):
        mask_attention_weights(again, 1.5)


def test_masking_through_the_command_line(tiny_bert, farstail_dir, tmp_path):
    out = tmp_path / "masking"
    nli_main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(out), "--epochs", "1",
              "--prune-heads", "0.5", "--prune-by", "masking", "--lr", "1e-3"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["experiment"] == "prune0.5-masking" and m["params"]["trainable"] == m["params"]["total"]
    masked = json.loads((out / "config.json").read_text())["derived"]["masked_weights"]
    assert masked["fraction"] == pytest.approx(0.5, abs=0.01)
    from safetensors.torch import load_file
    saved = load_file(out / "model" / "model.safetensors")
    query = saved["bert.encoder.layer.1.attention.self.query.weight"]
    assert abs(int((query == 0).sum()) - query.numel() / 2) <= 0.5  # zero after training: masked throughout
    assert "masked weights (the study's method" in (out / "report.txt").read_text()


def test_the_study_modules_print_their_lists_and_differences():
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], cwd=ROOT, capture_output=True, text=True).stdout  # noqa: E731
    listed = run("nli.study", "--list")
    assert "prune0.5-masking\t--prune-heads 0.5 --prune-by masking" in listed
    differences = run("nli.study")
    assert "0.7896" in differences and "logging_steps" in differences and "observation, not a fact" in differences
    ser = run("ser.study")
    assert "random_state=10" in ser and "wav2vec2-base-960h" in ser and "soxr_hq" in ser and "ambiguous" in ser
    # run_all.sh lists the experiments before anything trains: the lists must not import torch
    light = "import sys, nli.study, ser.study; print(sorted({'torch', 'transformers', 'matplotlib'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", light], cwd=ROOT, capture_output=True, text=True).stdout == "[]\n"
