"""A tiny model learns the generated data's rule, so a change that breaks learning fails the suite
(SER's, on more clips than run_all.sh --smoke has). SER: the generated emotions differ in
pitch and loudness (ser/synthetic.py); a 2-layer HuBERT of width 32 trained from random weights
through the command line gets them right on held-out clips. (NLI's learning is held by the smoke
run's test, tests/test_run_all.py: `all` at 0.9 or more on held-out pairs, `freeze12` near chance.)"""
import json

from ser.synthetic import write_shemo, write_tiny_hubert
from ser.train import main


def test_a_tiny_hubert_learns_the_generated_emotions(tmp_path):
    write_shemo(tmp_path / "data", per_class=15, speakers=4, seconds=(0.5, 1.0))  # 90 clips, 6 emotions
    write_tiny_hubert(tmp_path / "model")
    main(["--model", str(tmp_path / "model"), "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
          "--epochs", "8", "--lr", "1e-3", "--no-balance"])
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["split_items"]["test"]["items"] == 12  # held-out clips, stratified: 2 of each emotion
    assert m["test"]["accuracy"] >= 0.8 and m["val"]["accuracy"] >= 0.8  # chance: 1/6
    assert m["train"]["loss"] < 0.7  # ln 6 = 1.79
