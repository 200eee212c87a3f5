"""The NER task: subword alignment, windows and their merging, entity decoding with character
offsets, the objective, and seqeval scoring, on tiny random models with the packaged MiniLM tokenizer."""

import pytest
import torch

from danlu.data.ner import TaggedSentence
from danlu.errors import DanluError
from danlu.tasks import ner

LABELS = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from danlu.assets import install

    return AutoTokenizer.from_pretrained(str(install("minilm-l6", quiet=True)))


@pytest.fixture(scope="module")
def tiny_tagger(tokenizer):
    """A 2-layer, width-32 random BERT token classifier over LABELS."""
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                        num_labels=len(LABELS))
    return BertForTokenClassification(config).eval()


class TokenOnly(torch.nn.Module):
    """Logits that depend on each token alone (no context, no position): windowing cannot change them."""

    def __init__(self, vocab_size: int):
        super().__init__()
        torch.manual_seed(1)
        self.embed = torch.nn.Embedding(vocab_size, len(LABELS))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return type("Output", (), {"logits": self.embed(input_ids)})()


def test_first_subword_carries_the_label(tokenizer):
    sentence = TaggedSentence(["Merkel", "visited", "Washington", "\u200b"], ["B-PER", "O", "B-LOC", "O"])
    objective, lengths = ner.make_objective(tokenizer, [sentence], LABELS, 32)
    row = objective.rows[0]
    assert tokenizer.convert_ids_to_tokens(row["input_ids"]) == [
        "[CLS]", "mer", "##kel", "visited", "washington", "[SEP]"]  # the zero-width word has no token
    assert row["labels"] == [-100, 2, -100, 0, 1, -100]
    assert lengths == [6]


def test_objective_is_summed_cross_entropy_over_labelled_tokens(tokenizer, tiny_tagger):
    sentences = [TaggedSentence(["Angela", "Merkel", "in", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"]),
                 TaggedSentence(["Hello"], ["O"])]
    objective, _ = ner.make_objective(tokenizer, sentences, LABELS, 32)
    batch = objective.collate([0, 1])
    assert objective.count(batch) == 5
    assert batch["labels"][1].tolist()[3:] == [-100] * (batch["labels"].shape[1] - 3)  # padding
    mean = tiny_tagger(**batch).loss  # transformers: mean over labels != -100
    torch.testing.assert_close(objective.loss_sum(tiny_tagger, batch), mean * 5)


def test_unknown_tag_is_an_error(tokenizer, tiny_tagger):
    sentence = TaggedSentence(["Acme"], ["B-ORG"])
    with pytest.raises(DanluError, match="tags the model does not know: B-ORG"):
        ner.score(tiny_tagger, tokenizer, [sentence], LABELS, 32)


def test_plan_windows_cover_every_word_within_budget():
    counts = [1, 3, 2, 1, 1, 4, 1, 2, 2, 1, 9]
    windows = ner.plan_windows(counts, 6)
    assert windows[0][0] == 0 and windows[-1][1] == len(counts)
    for (start, end), (next_start, _) in zip(windows, windows[1:]):
        assert start < next_start <= end  # progress, and consecutive windows touch or overlap
    for start, end in windows:
        assert sum(min(c, 6) for c in counts[start:end]) <= 6
    assert ner.plan_windows([2, 2], 6) == [(0, 2)]
    assert ner.plan_windows([1] * 8, 4) == [(0, 4), (2, 6), (4, 8)]


def test_each_word_is_owned_by_the_window_where_it_is_most_central():
    windows = [(0, 4), (2, 6), (4, 8)]
    # word 2: context min(2, 1) in window 0, min(0, 3) in window 1 -> window 0; word 3: 0 vs 1 -> window 1
    assert ner.word_owners(windows, 8) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_long_sentences_are_windowed_not_truncated(tokenizer):
    words = [f"w{i}" for i in range(40)]
    sentence = TaggedSentence(words, ["B-PER" if i % 5 == 0 else "O" for i in range(40)])
    objective, lengths = ner.make_objective(tokenizer, [sentence], LABELS, 16)
    assert len(lengths) > 1 and max(lengths) <= 16
    labelled = sum(sum(1 for y in row["labels"] if y != -100) for row in objective.rows)
    assert labelled >= 40  # every word is labelled in at least one window (overlap labels some twice)


def test_windowed_predictions_equal_unwindowed_ones(tokenizer):
    model = TokenOnly(tokenizer.vocab_size)
    text = " ".join(["Angela Merkel met Emmanuel Macron in Paris."] * 12)
    pieces, _ = ner.text_pieces(tokenizer, [text])
    whole = ner.word_probabilities(model, tokenizer, pieces, 512)[0]
    windowed = ner.word_probabilities(model, tokenizer, pieces, 10, batch_size=3)[0]
    assert len(ner.make_windows(tokenizer, pieces, 10)) > 10
    assert all(p is not None for p in windowed)
    torch.testing.assert_close(torch.stack(windowed), torch.stack(whole))


def test_entities_have_character_offsets_in_multibyte_text(tokenizer):
    text = "Ángela visitó 東京 😀 con Zürich-Café."
    pieces, spans = ner.text_pieces(tokenizer, [text])
    words = [text[s:e] for s, e in spans[0]]
    assert words == ["Ángela", "visitó", "東", "京", "😀", "con", "Zürich", "-", "Café", "."]
    tags = ["B-PER", "O", "B-LOC", "I-LOC", "O", "O", "B-LOC", "I-LOC", "I-LOC", "O"]
    found = ner.entities(tags, [0.9, 1, 0.8, 0.6, 1, 1, 0.5, 0.5, 0.8, 1], spans[0], text)
    assert found == [
        {"type": "PER", "text": "Ángela", "start": 0, "end": 6, "score": 0.9},
        {"type": "LOC", "text": "東京", "start": 14, "end": 16, "score": 0.7},
        {"type": "LOC", "text": "Zürich-Café", "start": 23, "end": 34, "score": 0.6},
    ]


def test_predict_decodes_offsets_that_point_into_the_input(tokenizer, tiny_tagger):
    texts = ["Angela Merkel met Emmanuel Macron in Paris.", "東京で 😀 naïve café", ""]
    results = ner.predict(tiny_tagger, tokenizer, texts, LABELS, 12)
    assert len(results) == 3 and results[2] == {"entities": []}
    seen = 0
    for text, result in zip(texts, results):
        for e in result["entities"]:
            assert e["text"] == text[e["start"]:e["end"]] and e["type"] in ("LOC", "PER")
            assert 0 < e["score"] <= 1
            seen += 1
    assert seen  # a random model tags something
    assert "(no entities)" in ner.format_prediction("", results[2])


def test_ill_formed_predictions_are_repaired_before_decoding():
    probs = [torch.tensor([0.1, 0, 0, 0, 0.9]), torch.tensor([0.2, 0, 0, 0, 0.8]), None]
    tags, confidence = ner.decode_tags(probs, LABELS)
    assert tags == ["B-PER", "I-PER", "O"] and confidence[:2] == pytest.approx([0.9, 0.8])


def test_seqeval_strict_numbers_on_a_known_case():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O", "B-PER"]]  # I-ORG opening an entity: not strict IOB2
    m = ner.entity_metrics(true, pred)
    # predicted entities: PER (right), ORG (wrong type), PER (right); the I-ORG is no entity in strict mode
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["accuracy"] == pytest.approx(5 / 7) and m["entities"] == 4
    assert m["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert m["per_type"]["LOC"]["recall"] == 0.0 and m["per_type"]["ORG"]["support"] == 1


def test_score_reports_entity_metrics_and_loss(tokenizer, tiny_tagger):
    sentences = [TaggedSentence(["Angela", "Merkel", "in", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"])] * 3
    metrics = ner.score(tiny_tagger, tokenizer, sentences, LABELS, 8)
    assert metrics["examples"] == 3 and metrics["entities"] == 6
    assert 0 <= metrics["f1"] <= 1 and 0 < metrics["loss"] < 10
    assert set(metrics["per_type"]) == {"LOC", "PER"}
    table = ner.format_metrics(metrics)
    assert "f1" in table and "PER" in table.splitlines()[-1]


def test_request_validation_inputs_and_parity_decision(tmp_path):
    assert ner.validate_request("one") == ["one"]
    for bad in ([], [1], {"text": "x"}, None):
        with pytest.raises(ValueError, match="input must be a non-empty string or list of strings"):
            ner.validate_request(bad)
    plain = tmp_path / "in.txt"
    plain.write_text("Paris\n\nRome\n")
    assert ner.read_inputs(["Oslo"], str(plain)) == ["Oslo", "Paris", "Rome"]
    assert ner.input_of(TaggedSentence(["New", "York"], ["B-LOC", "I-LOC"])) == "New York"
    result = {"entities": [{"type": "LOC", "text": "Paris", "start": 3, "end": 8, "score": 0.9}]}
    assert ner.decision(result) == ner.decision({"entities": [{**result["entities"][0], "score": 0.5}]})
    assert ner.decision(result) != ner.decision({"entities": [{**result["entities"][0], "type": "ORG"}]})
