"""danlu explain: integrated gradients, attention and rollout, the page and JSON, bad input."""

import json

import pytest
import torch

from danlu.cli import main


@pytest.fixture(scope="module")
def classifier(tiny_bert):
    from danlu.explain.loading import load

    return load(tiny_bert, "cpu")


def test_integrated_gradients_add_up_to_the_change_of_probability(classifier):
    """Completeness: the attributions sum to f(text) - f(baseline), within the delta Captum reports."""
    from danlu.explain.attribution import baseline_ids, encode_one, integrated_gradients

    model, tok = classifier.model, classifier.tokenizer
    batch = encode_one(tok, "a wonderful, moving film about nothing", 128)
    attributions, delta, ibs = integrated_gradients(model, tok, batch, target=1, steps=50, internal_batch_size=7)
    assert attributions.shape == (batch["input_ids"].shape[1],)
    with torch.no_grad():
        p = torch.softmax(model(**batch).logits, -1)[0, 1]
        base = {**batch, "input_ids": baseline_ids(tok, batch["input_ids"])}
        p0 = torch.softmax(model(**base).logits, -1)[0, 1]
    assert abs(float(attributions.sum()) - float(p - p0)) <= delta + 1e-6
    assert ibs == 7
    assert all(p.requires_grad for p in model.parameters())  # turned back on


def test_internal_batch_size_is_bounded_by_steps_and_memory():
    from transformers import BertConfig

    from danlu.explain.attribution import choose_internal_batch_size

    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12)
    n = choose_internal_batch_size(config, 128, 50, torch.device("cpu"))
    assert 1 <= n <= 16


def test_attention_has_every_layer_and_head_and_rollout_rows_sum_to_one(classifier):
    from danlu.explain.attribution import attention_and_prediction, attention_rollout, encode_one

    model = classifier.model
    batch = encode_one(classifier.tokenizer, "not bad at all", 128)
    before = model.config._attn_implementation
    attentions, probs = attention_and_prediction(model, batch)
    seq = batch["input_ids"].shape[1]
    assert attentions.shape == (2, 2, seq, seq)
    torch.testing.assert_close(attentions.sum(-1), torch.ones(2, 2, seq))
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    torch.testing.assert_close(attention_rollout(attentions).sum(-1), torch.ones(seq))
    assert model.config._attn_implementation == before


def test_explain_writes_one_page_and_json(tiny_bert, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["explain", str(tiny_bert), "a wonderful, moving film", "--out", str(out), "--steps", "8"]) == 0
    printed = capsys.readouterr().out
    assert "convergence delta" in printed
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["tokens"] == ["[CLS]", "a", "wonderful", ",", "moving", "film", "[SEP]"]
    assert len(data["attributions"]) == 7 and data["steps"] == 8
    assert set(data["probabilities"]) == {"LABEL_0", "LABEL_1"}
    html = out.read_text()
    assert html.count('class="tok"') == 7
    assert "<script src" not in html and "http" not in html.replace("http-equiv", "")


def test_summary_over_a_split_links_every_example(tiny_bert, sentiment_csv, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "model"  # the tiny model with the CSV's labels
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2,
                                                               id2label={0: "neg", 1: "pos"},
                                                               label2id={"neg": 0, "pos": 1})
    model.save_pretrained(folder)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(folder)
    out = tmp_path / "explain"
    assert main(["explain", str(folder), "--data", str(sentiment_csv), "--n", "4", "--steps", "4",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["examples"]) == 4
    for row in summary["examples"]:
        assert (out / row["page"]).exists()
        assert row["page"] in (out / "index.html").read_text()
    assert set(summary["top_tokens"]) <= {"neg", "pos"}


def test_bad_input_is_one_line_and_exit_2(tiny_bert, sentiment_csv, tmp_path, capsys):
    assert main(["explain", str(tiny_bert), "   ", "--out", str(tmp_path / "x.html")]) == 2
    assert "tokenizes to nothing" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
    assert main(["explain", str(tiny_bert), "--data", str(sentiment_csv), "--n", "1000"]) == 2
    assert "larger than the test split" in capsys.readouterr().err
    onnx = tmp_path / "onnx"  # an ONNX variant whose parent is gone: nothing to take gradients through
    onnx.mkdir()
    (onnx / "config.json").write_text("{}")
    (onnx / "model.onnx").write_bytes(b"")
    (onnx / "danlu.json").write_text(json.dumps({"task": "classify", "parent": str(tmp_path / "gone")}))
    assert main(["explain", str(onnx), "text"]) == 2
    assert "no PyTorch model" in capsys.readouterr().err


def test_an_onnx_variant_is_explained_through_its_parent(tiny_bert, tmp_path):
    from danlu.explain.loading import load_differentiable

    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "config.json").write_text("{}")
    (onnx / "model.onnx").write_bytes(b"")
    (onnx / "danlu.json").write_text(json.dumps({"task": "classify", "parent": str(tiny_bert)}))
    loaded, notes = load_differentiable(onnx, "cpu")
    assert loaded.path == tiny_bert
    assert "explained through its parent PyTorch model" in notes[0]
