import pytest
import torch

from danlu.errors import DanluError
from danlu.evaluate.fewshot import fewshot_scores, label_log_likelihoods, parse_label_words

TRAIN = ["a fine film", "dull and long", "a joy", "a mess", "sharp and funny", "tedious"]
TRAIN_Y = ["fresh", "rotten", "fresh", "rotten", "fresh", "rotten"]


@pytest.fixture(scope="module")
def lm(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(tiny_llama), attn_implementation="sdpa").eval(),
            AutoTokenizer.from_pretrained(str(tiny_llama)))


def by_hand(model, tok, prefix, query, word):
    """log P(word | prefix + query + ' ') from one plain forward pass over the whole text."""
    p = tok(prefix, add_special_tokens=False)["input_ids"]
    q = tok(query, add_special_tokens=False)["input_ids"]
    w = tok(" " + word, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + q + w])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    start = len(p) + len(q)
    return sum(float(logprobs[start - 1 + i, t]) for i, t in enumerate(w))


@pytest.mark.parametrize("words", [["good", "bad"], ["splendiferous", "catastrophic"]])  # 1 and several tokens
def test_label_likelihood_equals_a_hand_computed_one(lm, words):
    model, tok = lm
    if words[0] == "splendiferous":
        assert len(tok(" splendiferous", add_special_tokens=False)["input_ids"]) > 1
    prefix = "Classify each text as good or bad.\n\nText: a joy\nAnswer: good\n\n"
    queries = ["Text: short\nAnswer:", "Text: a much longer review text than the first\nAnswer:"]
    scores = label_log_likelihoods(model, tok, prefix, queries, words, batch_size=3)
    for qi, query in enumerate(queries):
        for wi, word in enumerate(words):
            assert float(scores[qi, wi]) == pytest.approx(by_hand(model, tok, prefix, query, word), abs=1e-4)


def test_fewshot_scores_per_k(lm):
    model, tok = lm
    texts, true = ["great fun", "boring", "lovely", "awful"], ["fresh", "rotten", "fresh", "rotten"]
    results = fewshot_scores(model, tok, texts, true, TRAIN, TRAIN_Y, ["fresh", "rotten"], [0, 1, 5],
                             label_words=parse_label_words("fresh=good,rotten=bad", ["fresh", "rotten"]))
    assert list(results) == [0, 1, 5]
    for k, m in results.items():
        assert m["examples"] == 4 and 0 <= m["accuracy"] <= 1 and m["shots"] == k
        assert m["prompt_example"].count("Text:") == k + 1 and "good or bad" in m["prompt_example"]
    # the 0-shot prediction is the argmax of the hand-computed likelihoods
    prefix = "Classify each text as good or bad.\n\n"
    hand = [max(("fresh", "good"), ("rotten", "bad"),
                key=lambda lw: by_hand(model, tok, prefix, f"Text: {t}\nAnswer:", lw[1]))[0] for t in texts]
    assert results[0]["accuracy"] == pytest.approx(sum(h == y for h, y in zip(hand, true)) / 4)


def test_label_words_errors():
    assert parse_label_words("", ["a", "b"]) == {"a": "a", "b": "b"}
    with pytest.raises(DanluError, match="unknown label 'x'"):
        parse_label_words("x=good", ["a", "b"])
    with pytest.raises(DanluError, match="LABEL=WORD"):
        parse_label_words("a", ["a", "b"])
    with pytest.raises(DanluError, match="share a word"):
        parse_label_words("a=b", ["a", "b"])
