"""The CUDA-graph fast path on a GPU. Skipped without CUDA; benchmarks/device_check.sh runs them.

Tolerances: bf16 autocast rounds activations to 8 bits of mantissa, so graph and eager runs are
compared within 2% per-step loss and 5e-3 absolute on weights after 20 AdamW steps at lr 1e-3
(they launch the same kernels, so in practice they agree far closer); resume under graphs is
compared within 1e-3 (CUDA kernels with atomics are not bitwise reproducible run to run).
"""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import nli.train
from common.batching import LengthGroupedBatches
from common.distributed import Dist, my_micro_batches
from common.device import grad_scaler
from common.step import Steps, TrainStep, make_optimizer, set_lr
from nli.data import LABELS, collate, encode, read_split
from nli.model import load_classifier

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def nli_steps(model_dir, graphs: bool, farstail_dir, lr=1e-3):
    torch.manual_seed(0)
    model = load_classifier(str(model_dir), LABELS).to(CUDA).train()
    data = encode(AutoTokenizer.from_pretrained(model_dir), read_split(farstail_dir / "Train-word.csv"), 200)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr, CUDA, graphs)
    step = TrainStep(nli.train.forward(model), params, opt, grad_scaler(CUDA, torch.bfloat16), CUDA, torch.bfloat16,
                     clip=1.0)
    steps = Steps(step)
    if graphs:
        class Args:
            batch_size, max_length = 4, 200
        steps.capture(nli.train.capture_examples(data, Args, CUDA, True), print)
        assert steps.graphed
    return model, data, steps


def losses(model, data, steps, batches, size=4):
    out = []
    for batch in batches:
        steps.step.totals.zero_()
        for micro in my_micro_batches(batch, size, Dist())[0]:
            steps.micro(collate(data, micro, CUDA, rows=size, weight=1 / len(batch)))
        steps.update()
        loss_sum, _, n = steps.step.totals.tolist()
        out.append(loss_sum / n)
    return out


def test_graph_replay_equals_eager_over_20_steps(tiny_bert_no_dropout, farstail_dir):
    runs = []
    for graphs in (False, True):
        model, data, steps = nli_steps(tiny_bert_no_dropout, graphs, farstail_dir)
        batches = LengthGroupedBatches(data.lengths.tolist(), 8, seed=0).epoch(1) * 4  # 6 batches, 4 times
        runs.append((losses(model, data, steps, batches[:20]), {k: v.float().cpu() for k, v in model.state_dict().items()}))
    (eager_loss, eager_w), (graph_loss, graph_w) = runs
    assert all(abs(a - b) <= 0.02 * abs(a) for a, b in zip(eager_loss, graph_loss)), (eager_loss, graph_loss)
    worst = max((eager_w[k] - graph_w[k]).abs().max().item() for k in eager_w)
    assert worst < 5e-3, worst


def test_dropout_draws_fresh_numbers_on_every_replay(tiny_bert, farstail_dir):
    model, data, steps = nli_steps(tiny_bert, True, farstail_dir)
    set_lr(steps.step.optimizer, 0.0)  # the weights stay put: only dropout can change the loss
    batch = list(range(4))
    first, second = losses(model, data, steps, [batch, batch])
    assert first != second


def test_resume_under_graphs_ends_near_the_uninterrupted_run(tiny_bert, farstail_dir, tmp_path, monkeypatch):
    args = ["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--epochs", "2", "--lr", "1e-3",
            "--cuda-graphs", "on", "--batch-size", "8"]
    nli.train.main([*args, "--out", str(tmp_path / "whole")])
    real = nli.train.train_epoch

    def interrupted(*a, **kw):
        if a[-1].epoch == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(nli.train, "train_epoch", interrupted)
    with pytest.raises(SystemExit, match="^130$"):  # "interrupted; resume with --resume"
        nli.train.main([*args, "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(nli.train, "train_epoch", real)
    nli.train.main([*args, "--out", str(tmp_path / "cut"), "--resume"])
    a, b = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("whole", "cut"))
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(f"largest weight difference, resumed vs uninterrupted graph run: {worst:.3g}")
    assert worst < 1e-3, worst
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m["speed"]["cuda_graphs"] is True and m["speed"]["graph_shapes"] >= 1


def test_ser_graphs_replay_fresh_layerdrop_and_specaugment(tiny_hubert, shemo_dir, tmp_path):
    import ser.train
    ser.train.main(["--model", str(tiny_hubert), "--data-dir", str(shemo_dir), "--out", str(tmp_path / "run"),
                    "--epochs", "1", "--cuda-graphs", "on", "--lr", "1e-3"])
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["speed"]["cuda_graphs"] is True and m["speed"]["graph_shapes"] >= 1
    from ser.data import collate
    from ser.model import EmotionClassifier
    from transformers import HubertModel
    torch.manual_seed(0)
    model = EmotionClassifier(HubertModel.from_pretrained(tiny_hubert), 6, False).to(CUDA).train()
    params = list(model.parameters())
    opt = make_optimizer(params, 0.0, CUDA, True)
    step = TrainStep(ser.train.forward(model), params, opt, grad_scaler(CUDA, torch.bfloat16), CUDA, torch.bfloat16,
                     clip=None)
    steps = Steps(step)
    waves, labels = [torch.randn(20000), torch.randn(30000)], torch.tensor([0, 1])
    example = collate(waves, [0, 1], labels, 0.0, CUDA, rows=2)
    steps.capture([example], print)
    assert steps.graphed
    seen = []
    for _ in range(4):
        step.totals.zero_()
        steps.micro(collate(waves, [0, 1], labels, 0.0, CUDA, rows=2))
        steps.update()
        seen.append(step.totals[0].item())
    assert len(set(seen)) > 1, seen  # LayerDrop, SpecAugment and dropout differ from replay to replay
