"""danlu attack: the greedy search against a black box, the recipes' resources, the report, bad input."""

import json

import numpy as np
import pytest

from danlu.cli import main
from danlu.data.words import keyboard_typos
from danlu.robust.recipes import Constraints, Substitutes, char_edits, split_words
from danlu.robust.search import Words, greedy_attack, run_attacks

POSITIVE = {"great", "wonderful", "superb", "lovely"}


def lexicon_model(texts):
    """A black box: P(pos) grows with the count of positive words."""
    scores = np.array([sum(w.lower() in POSITIVE for w in t.split()) for t in texts], dtype=float)
    p = 1 / (1 + np.exp(-(scores - 0.5) * 3))
    return np.stack([1 - p, p], axis=1)


def test_words_rebuild_the_text_exactly():
    text = "It's a well-made, un-funny film... (2 stars)"
    w = Words(text)
    assert w.render(w.words) == text
    assert w.words == ["It's", "a", "well-made", "un-funny", "film", "2", "stars"]
    assert "".join(p for p, _ in w.pieces(w.words, {2})) == text


def test_textfooler_flips_the_black_box_with_few_changes_and_keeps_stop_words():
    constraints = Constraints(max_words_changed=0.5)
    subs = Substitutes("textfooler", constraints)
    texts = ["the film was lovely", "a great and wonderful movie", "it was not for me"]
    searches = [greedy_attack(t, 1, ["neg", "pos"], "textfooler", subs, constraints,
                              frozenset({"the", "was", "a", "and", "it", "not", "for", "me"}), "[UNK]")
                for t in texts]
    results = run_attacks(searches, lexicon_model)
    assert [r.status for r in results] == ["success", "success", "skipped"]
    first = results[0]
    assert first.changes[0]["from"] == "lovely" and first.changes[0]["to"] not in POSITIVE
    assert first.adversarial.startswith("the film was ")
    assert first.queries >= 3 and first.fraction_changed == 0.25
    assert len(results[1].changes) == 2  # both positive words had to go
    for r in results[:2]:
        assert lexicon_model([r.adversarial])[0].argmax() == 0


def test_budget_of_changed_words_is_respected():
    constraints = Constraints(max_words_changed=0.2)  # 1 of 5 words
    subs = Substitutes("textfooler", constraints)
    [r] = run_attacks([greedy_attack("great wonderful superb lovely film", 1, ["neg", "pos"], "textfooler",
                                     subs, constraints, frozenset(), "[UNK]")], lexicon_model)
    assert r.status == "failed" and len(r.changes) == 1


def test_resources():
    from danlu.data.words import counter_fitted, keyboard_neighbours, wordnet

    assert "film" in wordnet().synonyms("movies")
    assert "awful" in wordnet().synonyms("terrible")
    vectors = counter_fitted()
    assert len(vectors.words) == 65713
    near = vectors.neighbours(["terrible"], 10, 0.5)["terrible"]
    assert "horrible" in near and all(vectors.cosine("terrible", w) >= 0.5 for w in near)
    assert set(keyboard_neighbours()["a"]) >= {"q", "w", "s", "z"}


def test_character_edits_are_seeded():
    import random

    edits = char_edits("terrible", random.Random(0))
    assert edits == char_edits("terrible", random.Random(0)) and 1 <= len(edits) <= 4
    assert all(w != "terrible" for w in edits)
    typos = keyboard_typos("bad", {"a": ["s", "q"]}, 5, random.Random(0))
    assert sorted(typos) == ["bqd", "bsd"]


@pytest.fixture(scope="module")
def labelled_tiny(tiny_bert, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("labelled")
    AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("recipe", ["deepwordbug", "typo"])
def test_attack_writes_json_and_page(recipe, labelled_tiny, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "attack"
    assert main(["attack", str(labelled_tiny), "--data", str(sentiment_csv), "--n", "6", "--recipe", recipe,
                 "--out", str(out)]) == 0
    report = json.loads((out / "attack.json").read_text())
    m = report["metrics"]
    assert m["examples"] == 6 and m["attacked"] + sum(r["status"] == "skipped" for r in report["results"]) == 6
    assert m["clean_accuracy"] == m["attacked"] / 6
    assert m["accuracy_under_attack"] == (m["attacked"] - m["successful"]) / 6
    assert "stop words are never changed" in report["constraints"]
    assert m["queries_per_example"] > 1
    page = (out / "attack.html").read_text()
    assert "attack success rate" in page and "http" not in page


def test_bad_input(labelled_tiny, sentiment_csv, tmp_path, capsys):
    assert main(["attack", str(labelled_tiny), "--data", str(sentiment_csv), "--recipe", "bert-attack"]) == 2
    assert "unknown recipe 'bert-attack'; recipes: textfooler, pwws, deepwordbug, typo" in capsys.readouterr().err
    assert main(["attack", str(labelled_tiny), "--data", str(sentiment_csv), "--n", "500",
                 "--out", str(tmp_path / "a")]) == 2
    assert "larger than the test split" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
