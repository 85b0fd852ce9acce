import csv
import hashlib
import io
import json

import numpy as np
import pytest

from common.errors import UserError
from nli import data as nli_data
from nli.data import read_split
from nli.synthetic import write_farstail


def test_reader_keeps_quoted_tabs_and_quotes(farstail_dir):
    train = read_split(farstail_dir / "Train-word.csv")
    assert len(train) == 48
    # row 5 of the generator holds a quoted field with a tab and doubled quotes inside
    assert "\t" in train.premise[5] and '"نقل\tقول"' in train.premise[5]
    with open(farstail_dir / "Train-word.csv", encoding="utf-8") as f:
        naive = [line.rstrip("\n").split("\t") for line in f][1:]
    assert any(len(r) != 3 for r in naive)  # splitting on tabs would have broken that row


def test_test_split_keeps_hard_columns(farstail_dir):
    test = read_split(farstail_dir / "Test-word.csv")
    assert set(test.hard) == {"hard_hypothesis", "hard_overlap"}
    assert len(test.hard["hard_overlap"]) == len(test) == 24


def write_rows(path, rows, header=("premise", "hypothesis", "label")):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def test_unknown_label_names_file_and_line(tmp_path):
    write_rows(tmp_path / "x.csv", [["a b", "c d", "e"], ["a b", "c d", "x"]])
    with pytest.raises(UserError, match=r"x\.csv, line 3: unknown label 'x'"):
        read_split(tmp_path / "x.csv")


def test_empty_hypothesis_names_line(tmp_path):
    write_rows(tmp_path / "x.csv", [["a b", " ", "e"]])
    with pytest.raises(UserError, match=r"line 2: empty hypothesis"):
        read_split(tmp_path / "x.csv")


def test_missing_column_is_named(tmp_path):
    write_rows(tmp_path / "x.csv", [["a", "e"]], header=("premise", "label"))
    with pytest.raises(UserError, match="missing column.*hypothesis"):
        read_split(tmp_path / "x.csv")


def test_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise OSError("network unreachable")
    monkeypatch.setattr(nli_data.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"could not download Train-word.csv.*by hand from https://github.com/dml-qom"):
        nli_data.load_farstail(tmp_path)
    assert not list(tmp_path.iterdir())  # no partial file left behind
    (tmp_path / "a-file").write_text("x")
    for path in (tmp_path / "a-file", tmp_path / "a-file" / "farstail"):
        with pytest.raises(UserError, match=f"--data-dir {path} is not a folder and cannot be created"):
            nli_data.load_farstail(path)


def test_download_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(nli_data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not farstail"))
    with pytest.raises(UserError, match="sha256"):
        nli_data.load_farstail(tmp_path)
    assert not (tmp_path / "Train-word.csv").exists()


def test_download_with_right_hash_is_kept(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_farstail(src, rows=(6, 3, 3))
    payload = {name: (src / name).read_bytes() for name in nli_data.FILES.values()}
    monkeypatch.setattr(nli_data, "SHA256", {n: hashlib.sha256(b).hexdigest() for n, b in payload.items()})
    asked = []

    def fake(url, timeout):
        asked.append(url)
        return io.BytesIO(payload[url.rsplit("/", 1)[1]])
    monkeypatch.setattr(nli_data.urllib.request, "urlopen", fake)
    splits = nli_data.load_farstail(tmp_path / "dl")
    assert [len(s) for s in splits.values()] == [6, 3, 3]
    assert all(f"/raw/{nli_data.COMMIT}/data/" in u for u in asked) and len(asked) == 3  # pinned commit


def test_hypothesis_only_tokenises_no_premise(tiny_bert, farstail_dir, tmp_path):
    from nli import predict
    from nli.data import encode, load_tokenizer, read_split
    from nli.train import main
    tok = load_tokenizer(str(tiny_bert))
    split = read_split(farstail_dir / "Val-word.csv")
    alone, pair = encode(tok, split, 200, hypothesis_only=True), encode(tok, split, 200)
    for i in range(len(split)):
        n = int(alone.lengths[i])
        assert alone.ids[i, :n].tolist() == tok(split.hypothesis[i])["input_ids"]  # [CLS] h [SEP], nothing else
        assert alone.types[i].sum() == 0 and n < int(pair.lengths[i])
    out = tmp_path / "run"
    main(["--model", str(tiny_bert), "--data-dir", str(farstail_dir), "--out", str(out), "--epochs", "1",
          "--hypothesis-only", "--lr", "1e-3"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["experiment"] == "hypothesis-only" and set(m["test_subsets"]) >= {"hard_hypothesis", "hard_overlap"}
    model, tokenizer = predict.load(str(out))
    assert model.config.hypothesis_only  # so predict feeds the hypothesis alone, as it was trained
    a = predict.probabilities(model, tokenizer, ["کتاب دانشجو است."], ["کتاب است."])
    b = predict.probabilities(model, tokenizer, ["شهر تهران بزرگ است."], ["کتاب است."])
    assert np.allclose(a.numpy(), b.numpy())  # the premise makes no difference
