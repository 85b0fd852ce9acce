"""Shared fixtures: tiny models built from configs and generated data; nothing is downloaded."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a test must never reach a hub
os.environ["TOKENIZERS_PARALLELISM"] = "false"
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores (pytest.ini): one thread each, not two
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def farstail_dir(tmp_path_factory):
    from nli.synthetic import write_farstail
    path = tmp_path_factory.mktemp("farstail")
    write_farstail(path, rows=(48, 24, 24))
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 4-layer BERT, 4 heads of width 8, with a WordPiece vocabulary of the generated words."""
    from nli.synthetic import write_tiny_bert
    path = tmp_path_factory.mktemp("tiny-bert")
    write_tiny_bert(path, layers=4)
    return path


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory, tiny_bert):
    """The same model with every dropout off, for exact comparisons of training runs."""
    import json
    import shutil
    path = tmp_path_factory.mktemp("tiny-bert-nodrop")
    shutil.copytree(tiny_bert, path, dirs_exist_ok=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="session")
def shemo_dir(tmp_path_factory):
    """A generated ShEMO-named folder: 6 emotions × 8 clips, 2 female and 2 male speakers."""
    from ser.synthetic import write_shemo
    path = tmp_path_factory.mktemp("shemo")
    write_shemo(path, per_class=8, speakers=4)
    return path


@pytest.fixture(scope="session")
def tiny_hubert(tmp_path_factory):
    """HuBERT-base's layout (group-norm CNN, LayerDrop, SpecAugment) at tiny widths."""
    from ser.synthetic import write_tiny_hubert
    path = tmp_path_factory.mktemp("tiny-hubert")
    write_tiny_hubert(path)
    return path


def interrupt_at_epoch(monkeypatch, epoch: int):
    """Make training raise KeyboardInterrupt when `epoch` starts, as a Ctrl-C or a kill would
    (the run then says "interrupted" and exits 130). Returns a function that undoes it."""
    from common.training import Training
    real = Training.train_epoch

    def interrupted(self, at, *args, **kwargs):
        if at == epoch:
            raise KeyboardInterrupt
        return real(self, at, *args, **kwargs)
    monkeypatch.setattr(Training, "train_epoch", interrupted)
    return lambda: monkeypatch.setattr(Training, "train_epoch", real)


LONGEST = ("test_run_all.py", "test_distributed.py", "test_reliability.py", "test_learning.py")


def pytest_collection_modifyitems(items):
    """The files with the longest tests first (the smoke run, torchrun, the disk-full and learning tests), so that
    pytest's two workers do not end with one of them alone on a long file (pytest.ini keeps this order)."""
    items.sort(key=lambda item: LONGEST.index(item.path.name) if item.path.name in LONGEST else len(LONGEST))
