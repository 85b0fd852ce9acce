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
from nli.config import Experiment
from nli.data import LABEL_NAMES, collate, encode, read_split
from nli.model import apply_experiment, load_classifier
from nli.train import main as nli_main

CPU = torch.device("cpu")


def per_batch_padding(data, idx):
    """The padding a plain loop uses: to the batch's own longest pair, a 2D mask."""
    n = int(data.lengths[idx].max())
    mask = torch.arange(n)[None, :] < data.lengths[idx][:, None]
    return {"input_ids": data.ids[idx, :n], "token_type_ids": data.types[idx, :n], "attention_mask": mask.long()}


@pytest.mark.parametrize("experiment", [Experiment(), Experiment(freeze=2), Experiment(keep_layers=2),
                                        Experiment(prune_heads=0.5)], ids=lambda e: e.name)
def test_bucketed_padding_gives_the_logits_and_loss_of_per_batch_padding(tiny_bert, farstail_dir, experiment):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    data = encode(tok, read_split(farstail_dir / "Train-word.csv"), 200)
    model = load_classifier(str(tiny_bert), LABEL_NAMES)
    apply_experiment(model, experiment, seed=1)
    model.eval()
    idx = [3, 17, 29, 40, 5]  # lengths 12..35 word pieces: padded to 16..48, not to the longest
    bucketed = collate(data, idx, CPU, rows=8, weight=1 / len(idx))
    assert bucketed["input_ids"].shape == (8, 16 * -(-int(data.lengths[idx].max()) // 16))
    with torch.no_grad():
        plain = model(**per_batch_padding(data, idx)).logits
        ours = model(**{k: v for k, v in bucketed.items() if k not in ("label_ids", "weights")}).logits
    assert torch.allclose(ours[:len(idx)], plain, atol=1e-5)  # padding is masked: fp32 noise only
    ce = F.cross_entropy(ours, bucketed["label_ids"], reduction="none")
    assert torch.allclose((ce * bucketed["weights"]).sum(), F.cross_entropy(plain, data.label_ids[idx]), atol=1e-6)


def test_step_function_trains_like_a_plain_loop(tiny_bert_no_dropout, farstail_dir, tmp_path):
    """nli.train (buckets, micro-batches of 4 with filler rows, 2 accumulated, learning rate set
    per step) ends with the weights of a textbook loop over the same batches: per-batch padding,
    mean loss of 8, clip 1.0, AdamW, linear decay."""
    args = ["--batch-size", "4", "--grad-accum", "2", "--lr", "1e-3", "--seed", "3", "--epochs", "2", "--limit", "30"]
    nli_main(["--model", str(tiny_bert_no_dropout), "--data-dir", str(farstail_dir), "--out", str(tmp_path / "run"),
              *args])
    ours = load_file(tmp_path / "run" / "model" / "model.safetensors")

    seed_everything(3)
    model = load_classifier(str(tiny_bert_no_dropout), LABEL_NAMES).train()
    data = encode(AutoTokenizer.from_pretrained(tiny_bert_no_dropout), read_split(farstail_dir / "Train-word.csv").head(30), 200)
    sampler = LengthGroupedBatches(data.lengths.tolist(), 8, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    total = 2 * len(sampler)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total))
    for epoch in (1, 2):
        for batch in sampler.epoch(epoch):  # 30 pairs: the last batch of each epoch has 6
            loss = F.cross_entropy(model(**per_batch_padding(data, batch)).logits, data.label_ids[batch])
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


def test_a_failed_capture_is_named_by_its_first_error_and_where_it_was_raised():
    """common.graphs.capturing ends a broken capture (whose own error, as torch.cuda.graph's exit
    raises it, says only "previous error during capture") and raises the block's error instead;
    failure_line names that error and where it was raised. (No CUDA here: a graph that behaves as
    a CUDA graph does when its capture broke, and no stream.)"""
    from common.graphs import capturing, failure_line
    calls = []

    class BrokenCapture:
        def capture_begin(self, pool):
            calls.append("begin")

        def capture_end(self):
            calls.append("end")
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    def forward_with_a_host_sync():
        raise RuntimeError("called a synchronizing CUDA operation")  # what .item() raises under sync debug mode

    with pytest.raises(RuntimeError) as e:
        with capturing(BrokenCapture(), None, None):
            forward_with_a_host_sync()
    assert calls == ["begin", "end"]  # the broken capture was ended
    assert "previous error during capture" not in str(e.value)  # the block's own error, not the generic one
    line = failure_line(e.value)
    assert line.startswith("RuntimeError: called a synchronizing CUDA operation, raised at ")
    assert "test_step.py:" in line and "in forward_with_a_host_sync" in line


@pytest.mark.parametrize("graphs_then", [True, False])
def test_a_resumed_optimizer_follows_this_runs_graph_mode(graphs_then):
    """A checkpoint holds the optimizer's mode (capturable, learning rate as a tensor or a float);
    after loading it, the optimizer is put in the mode of the run that resumes."""
    from common.step import follow_graph_mode
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    if graphs_then:  # as written by a graph run on a GPU: capturable, fused, the learning rate a tensor
        for group in saved["param_groups"]:
            group.update(capturable=True, fused=True, lr=torch.tensor(7e-4))
    again = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    again.load_state_dict(saved)
    assert again.param_groups[0]["capturable"] is graphs_then  # what load_state_dict alone leaves
    follow_graph_mode(again, False, CPU)  # this run: eager, on the CPU
    group = again.param_groups[0]
    assert group["capturable"] is False and group["fused"] is False and isinstance(group["lr"], float)
    assert group["lr"] == pytest.approx(7e-4 if graphs_then else 1e-3)
    assert all(s["step"].device.type == "cpu" and float(s["step"]) == 1 for s in again.state.values())
    model(torch.randn(4, 3)).sum().backward()
    again.step()  # and it steps
    follow_graph_mode(again, True, CPU)  # the other way: what a graph run on a GPU would get
    group = again.param_groups[0]
    assert group["capturable"] is True and torch.is_tensor(group["lr"]) and float(group["lr"]) == pytest.approx(
        7e-4 if graphs_then else 1e-3)


def test_capture_covers_exactly_the_buckets_an_epoch_pads_to_often_enough(tiny_bert, farstail_dir):
    """capture_items counts the sampler's own micro-batches: a bucket is captured iff at least
    MIN_USES of the epoch's micro-batches are padded to it (the rarer ones run eagerly)."""
    from common.batching import micro_batches
    from common.distributed import Dist
    from common.graphs import MIN_USES, capture_items
    from nli.data import bucket_length
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    split = read_split(farstail_dir / "Train-word.csv")
    for i in range(3):  # three long premises: a bucket that few micro-batches pad to
        split.premise[i] = " ".join(split.premise[:5])
    data = encode(tok, split, 200)
    lengths = data.lengths.tolist()
    batches = LengthGroupedBatches(lengths, 4, seed=0).epoch(1)
    uses = {}
    for batch in batches:  # the shapes the loop really builds
        for idx in micro_batches(batch, 2, Dist())[0]:
            width = collate(data, idx, CPU, rows=2, weight=1.0)["input_ids"].shape[1]
            uses[width] = uses.get(width, 0) + 1
    items = capture_items(lengths, lambda n: bucket_length(n, 200), batches, 2)
    captured = {collate(data, [i], CPU, rows=2, weight=0.0)["input_ids"].shape[1] for i in items}
    assert captured == {w for w, n in uses.items() if n >= MIN_USES} and len(items) == len(captured)
    assert captured and set(uses) - captured  # this data has both kinds
