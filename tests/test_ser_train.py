"""The SER model and command line end to end, in-process, on a tiny HuBERT and generated audio."""
import csv
import json

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from ser import predict
from ser.evaluate import clip_logits
from ser.model import EmotionClassifier, load_classifier, masked_mean, save_classifier, study_feature_extractor
from ser.synthetic import tiny_hubert_config, write_shemo, write_tiny_hubert
from ser.train import main
from tests.conftest import interrupt_at_epoch


def run(model, data, out, *extra):
    main(["--model", str(model), "--data-dir", str(data), "--out", str(out), "--epochs", "1", *map(str, extra)])
    return out


def weights(out):
    return load_file(out / "model" / "model.safetensors")


def test_masked_mean_ignores_padded_frames():
    hidden = torch.randn(2, 6, 3)
    frames = torch.tensor([4, 6])
    garbage = hidden.clone()
    garbage[0, 4:] = 1e6
    pooled = masked_mean(garbage, frames)
    assert torch.allclose(pooled[0], hidden[0, :4].mean(0)) and torch.allclose(pooled[1], hidden[1].mean(0))


def test_layer_norm_hubert_with_mask_ignores_appended_padding():
    from transformers import HubertModel
    torch.manual_seed(0)
    cfg = tiny_hubert_config(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    model = EmotionClassifier(HubertModel(cfg), 4, use_attention_mask=True).eval()
    x = torch.randn(1, 12000)
    padded = torch.cat([x, torch.zeros(1, 8000)], dim=1)
    with torch.no_grad():
        a = model(x, torch.tensor([12000]))
        b = model(padded, torch.tensor([12000]))
    assert torch.allclose(a, b, atol=1e-5)


def test_saved_model_reloads_to_the_same_logits(tmp_path):
    from transformers import HubertModel
    torch.manual_seed(0)
    model = EmotionClassifier(HubertModel(tiny_hubert_config()), 3, use_attention_mask=False).eval()
    save_classifier(model, study_feature_extractor(), ["x", "y", "z"], tmp_path)
    again, fe, labels = load_classifier(str(tmp_path))
    x = torch.randn(2, 16000)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([16000, 9000])), again(x, torch.tensor([16000, 9000])))
    assert labels == ["x", "y", "z"] and fe.return_attention_mask is False


def test_end_to_end_writes_every_output_without_leaks(tiny_hubert, shemo_dir, tmp_path, capsys):
    out = run(tiny_hubert, shemo_dir, tmp_path / "run", "--epochs", 2, "--lr", 1e-3)
    for name in ("config.json", "train.log", "steps.csv", "history.csv", "metrics.json", "report.txt", "split.csv",
                 "curves.png", "confusion_matrix_train.png", "confusion_matrix_val.png", "confusion_matrix_test.png",
                 "class_distribution.png", "clip_lengths.png", "model/config.json", "model/model.safetensors",
                 "model/preprocessor_config.json"):
        assert (out / name).exists(), name
    assert not list(out.glob("checkpoint*"))
    for png in out.glob("*.png"):
        assert matplotlib.image.imread(png).shape[0] > 100, png
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == 2 and "train_accuracy" in rows[0]
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "ser" and set(m["train"]) >= {"accuracy", "loss", "macro_f1"}
    assert set(m["test"]["per_class"]) == {"anger", "fear", "happiness", "neutral", "sadness", "surprise"}
    assert "leak-free" in m["protocol"] and m["skipped_files"] == []
    assert m["class_counts"]["before"] == m["class_counts"]["after"]  # generated classes are already even
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["derived"]["feature_extractor"].startswith("the model has none: the study's: facebook/wav2vec2-base-960h")
    assert "confusion matrix" in (out / "report.txt").read_text()

    split = list(csv.DictReader(open(out / "split.csv")))
    held_out = {r["path"] for r in split if r["split"] != "train"}
    assert held_out and not held_out & {r["path"] for r in split if r["split"] == "train"}

    # predict: readable files are printed, an unreadable one named, exit status 1
    sf.write(tmp_path / "stereo48k.flac", np.random.default_rng(0).normal(0, 0.1, (48000, 2)).astype(np.float32), 48000)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        predict.main(["--model", str(out / "model"), str(tmp_path / "stereo48k.flac"), str(tmp_path / "missing.wav")])
    got = capsys.readouterr()
    assert e.value.code == 1 and "stereo48k.flac: " in got.out and "missing.wav" in got.err


def test_balancing_evens_training_classes_and_leaves_val_test_alone(tiny_hubert, tmp_path):
    write_shemo(tmp_path / "data", per_class=10, speakers=4, letters="ANS")
    for f in (tmp_path / "data").rglob("*.wav"):  # anger keeps 10 clips, neutral 7, sadness 4
        if (f.name[3] == "S" and int(f.name[4:6]) > 4) or (f.name[3] == "N" and int(f.name[4:6]) > 7):
            f.unlink()
    out = run(tiny_hubert, tmp_path / "data", tmp_path / "run", "--cache-dir", tmp_path / "cache")
    m = json.loads((out / "metrics.json").read_text())
    before, after = m["class_counts"]["before"], m["class_counts"]["after"]
    assert len(set(after.values())) == 1 and max(after.values()) == max(before.values())
    assert before["sadness"] < before["neutral"] < before["anger"]
    split = list(csv.DictReader(open(out / "split.csv")))
    for part in ("val", "test"):
        assert all(r["augmentation"] == "" for r in split if r["split"] == part)
        assert m[part]["per_class"]["anger"]["support"] == sum(
            r["split"] == part and r["label"] == "anger" for r in split)
    copies = [r for r in split if r["augmentation"]]
    assert len(copies) == sum(after.values()) - sum(before.values()) == len(list((tmp_path / "cache").glob("*.npy")))
    train_files = {r["path"] for r in split if r["split"] == "train" and not r["augmentation"]}
    assert {r["path"] for r in copies} <= train_files


def test_speaker_split_on_the_command_line(tiny_hubert, shemo_dir, tmp_path):
    write_shemo(tmp_path / "data", per_class=8, speakers=8)
    out = run(tiny_hubert, tmp_path / "data", tmp_path / "run", "--split", "speaker")
    split = list(csv.DictReader(open(out / "split.csv")))
    owners = {}
    for r in split:
        owners.setdefault(r["speaker"], set()).add(r["split"])
    assert all(len(v) == 1 for v in owners.values()) and len(owners) == 8
    assert "speaker-independent" in json.loads((out / "metrics.json").read_text())["protocol"]


def quiet_hubert(tmp_path):
    """No dropout of any kind, no LayerDrop, no SpecAugment: training is a deterministic function."""
    path = tmp_path / "quiet-hubert"
    write_tiny_hubert(path, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                      final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    return path


def test_grad_accum_equals_larger_batch(tmp_path):
    model = quiet_hubert(tmp_path)
    write_shemo(tmp_path / "data", per_class=4, speakers=2, seconds=(1.0, 1.0))
    common = ("--lr", 1e-3, "--amp", "off", "--no-balance")
    a = weights(run(model, tmp_path / "data", tmp_path / "a", "--batch-size", 4, *common))
    b = weights(run(model, tmp_path / "data", tmp_path / "b", "--batch-size", 2, "--grad-accum", 2, *common))
    c = weights(run(model, tmp_path / "data", tmp_path / "c", "--batch-size", 2, *common))
    for k in a:  # (key biases have an exactly-zero gradient; Adam turns its rounding noise into ±lr steps)
        if not k.endswith("k_proj.bias"):
            assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert not torch.allclose(a["fc1.weight"], c["fc1.weight"], atol=1e-5)


def test_resume_after_interruption_equals_uninterrupted_run(tiny_hubert, shemo_dir, tmp_path, monkeypatch):
    # the tiny HuBERT keeps LayerDrop (torch RNG) and SpecAugment (numpy RNG): resume must restore both
    args = ("--epochs", 2, "--lr", 1e-3, "--seed", 3, "--limit", 24)
    whole = weights(run(tiny_hubert, shemo_dir, tmp_path / "whole", *args))
    undo = interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(SystemExit, match="^130$"):  # "interrupted; resume with --resume"
        run(tiny_hubert, shemo_dir, tmp_path / "cut", *args)
    undo()
    resumed = weights(run(tiny_hubert, shemo_dir, tmp_path / "cut", *args, "--resume"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_user_errors_exit_2(tiny_hubert, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        run(tiny_hubert, tmp_path / "empty", tmp_path / "run")
    assert e.value.code == 2 and "no ShEMO-named" in capsys.readouterr().err
    write_shemo(tmp_path / "few", per_class=2, letters="AN")
    with pytest.raises(SystemExit) as e:
        run(tiny_hubert, tmp_path / "few", tmp_path / "run2")
    assert e.value.code == 2 and "at least 3" in capsys.readouterr().err


def test_explicit_feature_extractor_is_used_and_recorded(tiny_hubert, shemo_dir, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                             return_attention_mask=True).save_pretrained(tmp_path / "fe")
    out = run(tiny_hubert, shemo_dir, tmp_path / "run", "--feature-extractor", tmp_path / "fe", "--limit", 12)
    derived = json.loads((out / "config.json").read_text())["derived"]
    assert derived["feature_extractor"] == str(tmp_path / "fe")
    assert derived["attention_mask"] is True and derived["do_normalize"] is False
    model, fe, _ = load_classifier(str(out / "model"))
    assert model.use_attention_mask and fe.return_attention_mask  # the saved model keeps that choice


def test_specaugment_spans_are_drawn_on_the_device_inside_each_clip():
    from transformers.models.hubert.modeling_hubert import _compute_mask_indices
    from ser.model import span_mask
    lengths = torch.tensor([200, 120, 40])
    torch.manual_seed(0)
    masks = torch.stack([span_mask(lengths, 200, 0.05, 10, 2) for _ in range(500)])
    assert masks.shape == (500, 3, 200)
    assert not masks[:, 1, 120:].any() and not masks[:, 2, 40:].any()  # never in a clip's padding
    assert (masks.sum(-1) >= 10).all()  # at least min_masks=2 spans of 10 (they may overlap)
    assert not torch.equal(masks[0], masks[1])  # fresh draws each call
    torch.manual_seed(0)
    assert torch.equal(span_mask(lengths, 200, 0.05, 10, 2), masks[0])  # and fixed by the seed
    # the masked share matches transformers' own draw for a clip filling the width (within 5%)
    np.random.seed(0)
    theirs = np.mean([_compute_mask_indices((1, 200), 0.05, 10, min_masks=2).mean() for _ in range(2000)])
    ours = masks[:, 0].float().mean().item()
    assert abs(ours - theirs) / theirs < 0.05, (ours, theirs)


def test_layerdrop_is_drawn_on_the_device_and_only_in_training(tmp_path):
    from transformers import HubertModel
    torch.manual_seed(0)
    cfg = tiny_hubert_config(layerdrop=1.0, mask_time_prob=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                             activation_dropout=0.0, feat_proj_dropout=0.0)
    model = EmotionClassifier(HubertModel(cfg), 3, use_attention_mask=False)
    x, lengths = torch.randn(2, 16000), torch.tensor([16000, 12000])
    with torch.no_grad():
        train_a, eval_a = model.train()(x, lengths), model.eval()(x, lengths)
        for p in model.hubert.encoder.layers.parameters():
            p.add_(0.5)
        train_b, eval_b = model.train()(x, lengths), model.eval()(x, lengths)
    assert torch.equal(train_a, train_b)  # every layer dropped: its weights do not matter
    assert not torch.allclose(eval_a, eval_b)  # evaluation never drops a layer
    assert model.hubert.config.layerdrop == 1.0  # the saved config keeps the real value


def test_evaluation_gives_each_clip_the_logits_ser_predict_gives_it(tiny_hubert, tmp_path):
    from transformers import HubertModel
    from ser.audio import normalize
    torch.manual_seed(0)
    model = EmotionClassifier(HubertModel.from_pretrained(tiny_hubert), 3, use_attention_mask=False).eval()
    rng = np.random.default_rng(0)
    waves = [normalize((0.1 * rng.standard_normal(n)).astype(np.float32), True)
             for n in (8000, 15000, 16000, 17000, 30000, 9000, 40000)]
    together = clip_logits(model, waves, torch.device("cpu"), None, 0.0)
    fe = study_feature_extractor()
    for wave, row in zip(waves, together):
        alone = predict.classify(model, fe, wave.numpy())  # normalising again changes nothing
        assert torch.allclose(alone, row.softmax(-1), atol=1e-5)
    # group norm: how far a clip is padded does change its logits, hence one padding rule for both
    with torch.no_grad():
        own = model(torch.nn.functional.pad(waves[0], (0, 8000))[None], torch.tensor([8000]))
        more = model(torch.nn.functional.pad(waves[0], (0, 24000))[None], torch.tensor([8000]))
    assert not torch.allclose(own, more, atol=1e-5)


def test_bucketed_padding_leaves_a_masked_layer_norm_model_unchanged():
    from transformers import HubertModel
    from ser.data import collate
    torch.manual_seed(0)
    cfg = tiny_hubert_config(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    model = EmotionClassifier(HubertModel(cfg), 4, use_attention_mask=True).eval()
    waves = [torch.randn(n) for n in (9000, 14000, 21000)]
    batch = collate(waves, [0, 1, 2], torch.zeros(3, dtype=torch.long), 0.0, torch.device("cpu"), rows=4)
    assert batch["input_values"].shape == (4, 32000)  # whole seconds, plus one zero-weight filler row
    plain = torch.zeros(3, 21000)
    for i, w in enumerate(waves):
        plain[i, :len(w)] = w
    with torch.no_grad():
        ours = model(batch["input_values"], batch["lengths"])[:3]
        theirs = model(plain, torch.tensor([9000, 14000, 21000]))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_study_protocol_trains_on_copies_of_test_clips_and_split_csv_says_so(tiny_hubert, tmp_path):
    write_shemo(tmp_path / "data", per_class={"A": 12, "N": 10, "S": 4}, speakers=4)
    out = run(tiny_hubert, tmp_path / "data", tmp_path / "study", "--protocol", "study", "--seed", 1)
    rows = list(csv.DictReader(open(out / "split.csv")))
    test_sources = {r["path"] for r in rows if r["split"] == "test"}
    leaked = [r for r in rows if r["split"] == "train" and r["path"] in test_sources]
    assert leaked and all("test" in r["source_also_in"] for r in leaked)
    assert len(rows) == 36  # the whole corpus balanced to 12 per class before the split
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"].startswith("study") and m["class_counts"]["corpus"] == {"anger": 12, "neutral": 10,
                                                                                   "sadness": 4}
    assert sum(m["split_items"][k]["augmented"] for k in ("train", "val", "test")) == 10
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["derived"]["augmentation"]["method"] == "librosa_phase_vocoder"
    assert cfg["args"]["split_seed"] is None and cfg["derived"]["split_seed"] == 10  # the random_state drawn with
    recalls = [v["recall"] for v in m["test"]["per_class"].values() if v["support"] > 0]
    assert m["test"]["uar"] == pytest.approx(sum(recalls) / len(recalls))  # UAR: mean recall of present classes


@pytest.mark.parametrize("split", ["random", "speaker"])
def test_leak_free_protocols_never_train_on_a_held_out_clip(split):
    from ser.splits import Protocol, study_items
    rng = np.random.default_rng(0)
    labels = [str(x) for x in rng.choice(["a", "b", "c"], 300, p=[0.6, 0.3, 0.1])]
    speakers = [f"S{i % 12}" for i in range(300)]
    items = Protocol("leak-free", split).items(labels, speakers, seed=0, limit=None)
    held_out = {it.clip for k in ("val", "test") for it in items[k]}
    assert all(it.augmentation is None for k in ("val", "test") for it in items[k])
    assert not held_out & {it.clip for it in items["train"]}
    study = study_items(labels, seed=0, split_seed=10, limit=None)
    assert {it.clip for it in study["test"]} & {it.clip for it in study["train"]}  # the study's protocol leaks
    assert any(it.augmentation is not None for it in study["test"])


def test_ser_trains_without_audiomentations_when_nothing_is_augmented(tiny_hubert, shemo_dir, tmp_path, monkeypatch,
                                                                      capsys):
    """The GPU machine has no audiomentations: it is needed only when copies are made."""
    import importlib.metadata
    import sys
    real = importlib.metadata.version

    def version(name):
        if name == "audiomentations":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setitem(sys.modules, "audiomentations", None)  # import audiomentations raises ImportError
    out = run(tiny_hubert, shemo_dir, tmp_path / "run", "--no-balance", "--limit", 12)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["run_info"]["audiomentations"] == "not installed"
    assert cfg["derived"]["augmentation"]["audiomentations"] == "not installed"
    write_shemo(tmp_path / "uneven", per_class={"A": 6, "N": 3, "S": 3}, speakers=2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(tiny_hubert, tmp_path / "uneven", tmp_path / "balanced")
    assert e.value.code == 2 and "balancing needs audiomentations" in capsys.readouterr().err


def test_a_frozen_feature_encoder_gets_no_backward(tiny_hubert, shemo_dir, tmp_path, monkeypatch):
    from ser.model import EmotionClassifier
    seen = []
    real = EmotionClassifier.forward

    def watched(self, input_values, lengths):
        handle = self.hubert.feature_extractor.register_forward_hook(
            lambda m, a, out: seen.append(out.requires_grad))
        try:
            return real(self, input_values, lengths)
        finally:
            handle.remove()
    monkeypatch.setattr(EmotionClassifier, "forward", watched)
    out = run(tiny_hubert, shemo_dir, tmp_path / "run", "--freeze-feature-encoder", "--limit", 12, "--lr", 1e-3)
    assert seen and not any(seen)  # the CNN's output needs no gradient: its backward never runs
    before, after = load_file(tiny_hubert / "model.safetensors"), weights(out)
    conv = [k for k in before if k.startswith("feature_extractor.")]
    assert conv and all(torch.equal(before[k], after["hubert." + k]) for k in conv)
    assert not torch.equal(before["encoder.layers.0.attention.q_proj.weight"],
                           after["hubert.encoder.layers.0.attention.q_proj.weight"])


def test_the_leak_split_of_the_studys_test_split_adds_up(tiny_hubert, tmp_path):
    from ser.synthetic import write_shemo
    from ser.train import main
    write_shemo(tmp_path / "data", per_class={"A": 12, "N": 8, "S": 5}, speakers=4)
    out = tmp_path / "study"
    main(["--model", str(tiny_hubert), "--data-dir", str(tmp_path / "data"), "--out", str(out), "--epochs", "1",
          "--protocol", "study", "--cache-dir", str(tmp_path / "cache")])
    m = json.loads((out / "metrics.json").read_text())
    leak, test = m["test_leak"], m["split_items"]["test"]
    assert leak["original clips"]["items"] + leak["augmented copies"]["items"] == test["items"]
    assert leak["source clip also in training"]["items"] + leak["source clip not in training"]["items"] == test["items"]
    assert leak["augmented copies"]["items"] == test["augmented"]
    rows = [r for r in csv.DictReader(open(out / "predictions.csv")) if r["split"] == "test"]
    seen = [r for r in rows if "train" in r["source_also_in"].split(";")]
    right = sum(r["true"] == r["predicted"] for r in seen)
    assert leak["source clip also in training"]["accuracy"] == pytest.approx(right / len(seen))
    overall = sum(g["accuracy"] * g["items"] for k, g in leak.items() if k in ("original clips", "augmented copies")
                  and g["items"])
    assert overall / test["items"] == pytest.approx(m["test"]["accuracy"])
    assert "the leak inside this test split" in (out / "report.txt").read_text()


def test_augment_method_on_the_command_line_chooses_the_backend(tiny_hubert, tmp_path):
    """--augment-method picks audiomentations' backend: recorded in config.json, and the copies it
    makes (cached by content and settings) are its own, not the other backend's."""
    write_shemo(tmp_path / "uneven", per_class={"A": 6, "N": 3}, speakers=2)
    cache = tmp_path / "cache"
    made = {}
    for method in ("librosa", "signalsmith"):
        before = set(cache.glob("*.npy")) if cache.exists() else set()
        run(tiny_hubert, tmp_path / "uneven", tmp_path / method, "--augment-method", method, "--cache-dir", cache)
        config = json.loads((tmp_path / method / "config.json").read_text())
        assert config["args"]["augment_method"] == method
        assert config["derived"]["augmentation"]["method"] == {"librosa": "librosa_phase_vocoder",
                                                               "signalsmith": "signalsmith_stretch"}[method]
        made[method] = sorted(set(cache.glob("*.npy")) - before)
        assert made[method]  # this method's own copies (the training split was balanced)
    assert len(made["librosa"]) == len(made["signalsmith"])  # the same draws, each computed by its own backend
    first = [np.load(p) for p in made["librosa"]]
    assert not any(any(len(a) == len(b) and np.allclose(a, b) for a in first) for b in map(np.load, made["signalsmith"]))
