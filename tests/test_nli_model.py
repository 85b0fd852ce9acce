"""Structural head pruning, layer dropping and freezing on a tiny BERT."""
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common.errors import UserError
from nli.data import LABEL_NAMES
from nli.model import choose_heads, encoder_layers, keep_layers, load_classifier, prune_heads


def batch(tokenizer):
    return tokenizer(["کتاب دانشجو شهر تهران است.", "آب باران کوه دریا جنگل درخت بود."],
                     ["کتاب است.", "دریا نیست."], padding=True, return_tensors="pt")


def test_choose_heads_is_seeded_counts_right_and_never_empties_a_layer():
    heads = choose_heads(12, 12, 0.5, seed=3)
    assert sum(len(h) for h in heads.values()) == 72
    assert all(len(h) < 12 for h in heads.values())
    assert heads == choose_heads(12, 12, 0.5, seed=3) and heads != choose_heads(12, 12, 0.5, seed=4)
    tight = choose_heads(2, 4, 0.75, seed=0)  # 6 of 8: exactly 3 per layer is the only legal choice
    assert {k: len(v) for k, v in tight.items()} == {0: 3, 1: 3}
    with pytest.raises(UserError):
        choose_heads(2, 4, 0.9, seed=0)


def test_pruned_heads_equal_zeroed_output_columns_and_reload(tiny_bert, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    inputs = batch(tok)
    torch.manual_seed(0)
    full = load_classifier(str(tiny_bert), LABEL_NAMES).eval()
    heads = {0: [1, 2], 2: [0], 3: [0, 1, 3]}
    size = full.config.hidden_size // full.config.num_attention_heads

    masked = load_classifier(str(tiny_bert), LABEL_NAMES).eval()
    masked.load_state_dict(full.state_dict())
    with torch.no_grad():
        for layer, hs in heads.items():
            for h in hs:  # a removed head contributes nothing through the output projection
                encoder_layers(masked)[layer].attention.output.dense.weight[:, h * size:(h + 1) * size] = 0
        expected = masked(**inputs).logits

    n_before = sum(p.numel() for p in full.parameters())
    prune_heads(full, heads)
    with torch.no_grad():
        got = full(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5)
    attn = encoder_layers(full)[3].attention.self
    assert attn.num_attention_heads == 1 and attn.query.weight.shape[0] == size
    assert sum(p.numel() for p in full.parameters()) == n_before - 6 * (4 * size * full.config.hidden_size + 3 * size)

    full.save_pretrained(tmp_path)
    assert full.config.pruned_heads == {"0": [1, 2], "2": [0], "3": [0, 1, 3]}
    again = load_classifier(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, got)
    with pytest.raises(Exception):  # plain from_pretrained cannot rebuild the smaller shapes
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_keep_layers_saves_and_reloads_shorter_model(tiny_bert, tmp_path):
    model = load_classifier(str(tiny_bert), LABEL_NAMES).eval()
    keep_layers(model, 2)
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert again.config.num_hidden_layers == 2 and len(encoder_layers(again)) == 2
    inputs = batch(AutoTokenizer.from_pretrained(tiny_bert))
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, model(**inputs).logits)
    with pytest.raises(UserError, match="--keep-layers 9"):
        keep_layers(load_classifier(str(tiny_bert), LABEL_NAMES), 9)


def test_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--model"):
        load_classifier(str(tmp_path / "nothing"), LABEL_NAMES)
