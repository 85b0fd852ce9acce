"""The fast path's CPU-checkable parts: length buckets change no result, the one step function
(fixed-size micro-batches, zero-weight filler rows, accumulation, device-side learning rate)
trains exactly as a plain loop does, and --cuda-graphs refuses what cannot work."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoTokenizer

from common.batching import LengthGroupedBatches
from common.rng import seed_everything
from nli.data import LABELS, collate, encode, read_split
from nli.model import apply_experiment, load_classifier
from nli.train import main as nli_main

CPU = torch.device("cpu")


def per_batch_padding(data, idx):
    """The padding a plain loop uses: to the batch's own longest pair, a 2D mask."""
    n = int(data.lengths[idx].max())
    mask = torch.arange(n)[None, :] < data.lengths[idx][:, None]
    return {"input_ids": data.ids[idx, :n], "token_type_ids": data.types[idx, :n], "attention_mask": mask.long()}


@pytest.mark.parametrize("experiment", [dict(), dict(freeze=2), dict(keep=2), dict(prune=0.5)])
def test_bucketed_padding_gives_the_logits_and_loss_of_per_batch_padding(tiny_bert, farstail_dir, experiment):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    data = encode(tok, read_split(farstail_dir / "Train-word.csv"), 200)
    model = load_classifier(str(tiny_bert), LABELS)
    apply_experiment(model, experiment.get("keep"), experiment.get("prune"), experiment.get("freeze", 0), seed=1)
    model.eval()
    idx = [3, 17, 29, 40, 5]  # lengths 12..35 word pieces: padded to 16..48, not to the longest
    bucketed = collate(data, idx, CPU, rows=8, weight=1 / len(idx))
    assert bucketed["input_ids"].shape == (8, 16 * -(-int(data.lengths[idx].max()) // 16))
    with torch.no_grad():
        plain = model(**per_batch_padding(data, idx)).logits
        ours = model(**{k: v for k, v in bucketed.items() if k not in ("labels", "weights")}).logits
    assert torch.allclose(ours[:len(idx)], plain, atol=1e-5)  # padding is masked: fp32 noise only
    ce = F.cross_entropy(ours, bucketed["labels"], reduction="none")
    assert torch.allclose((ce * bucketed["weights"]).sum(), F.cross_entropy(plain, data.labels[idx]), atol=1e-6)


def test_step_function_trains_like_a_plain_loop(tiny_bert_no_dropout, farstail_dir, tmp_path):
    """nli.train (buckets, micro-batches of 4 with filler rows, 2 accumulated, learning rate set
    per step) ends with the weights of a textbook loop over the same batches: per-batch padding,
    mean loss of 8, clip 1.0, AdamW, linear decay."""
    args = ["--batch-size", "4", "--grad-accum", "2", "--lr", "1e-3", "--seed", "3", "--epochs", "2", "--limit", "30"]
    nli_main(["--model", str(tiny_bert_no_dropout), "--data-dir", str(farstail_dir), "--out", str(tmp_path / "run"),
              *args])
    ours = load_file(tmp_path / "run" / "model" / "model.safetensors")

    seed_everything(3)
    model = load_classifier(str(tiny_bert_no_dropout), LABELS).train()
    data = encode(AutoTokenizer.from_pretrained(tiny_bert_no_dropout), read_split(farstail_dir / "Train-word.csv").head(30), 200)
    sampler = LengthGroupedBatches(data.lengths.tolist(), 8, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    total = 2 * len(sampler)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total))
    for epoch in (1, 2):
        for batch in sampler.epoch(epoch):  # 30 pairs: the last batch of each epoch has 6
            loss = F.cross_entropy(model(**per_batch_padding(data, batch)).logits, data.labels[batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            sched.step()
    plain = model.state_dict()
    for name, value in ours.items():
        if name.endswith("attention.self.key.bias"):
            continue  # its gradient is zero in exact arithmetic; Adam scales rounding noise up to ±lr
        assert torch.allclose(value, plain[name], atol=2e-5), name
    before = load_file(tiny_bert_no_dropout / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(ours[name], before[name], atol=1e-4)  # and it did train


def test_cuda_graphs_on_without_cuda_is_a_user_error(tiny_bert, farstail_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as e:
        nli_main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(tmp_path / "run"),
                  "--cuda-graphs", "on"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--cuda-graphs on needs a CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "train.log").exists()  # refused before anything was written


def test_cuda_graphs_auto_falls_back_to_eager_on_the_cpu(tiny_bert, farstail_dir, tmp_path):
    nli_main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(tmp_path / "run"),
              "--epochs", "1", "--limit", "16"])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["args"]["cuda_graphs"] == "auto" and cfg["derived"]["cuda_graphs"] == "off (no CUDA device)"
