"""danlu explain for every task: token classifiers (per entity), QA models (start and end), decoders (next
token, a greedy continuation), on tiny random models; targets, shapes, completeness, bad input."""

import json

import pytest
import torch

from danlu.cli import main

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]  # tiny_ner's (conftest.py)


@pytest.fixture(scope="module")
def tiny_qa(tiny_bert, tmp_path_factory):
    from transformers import AutoTokenizer, BertForQuestionAnswering

    folder = tmp_path_factory.mktemp("tiny-qa")
    torch.manual_seed(0)
    BertForQuestionAnswering.from_pretrained(str(tiny_bert)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(folder)
    return folder


def _explain(tmp_path, *argv):
    out = tmp_path / "page.html"
    assert main(["explain", *map(str, argv), "--out", str(out), "--steps", "6"]) == 0
    return json.loads(out.with_suffix(".json").read_text()), out.read_text()


def test_token_classifier_explains_each_entity_at_its_first_token(tiny_ner, tmp_path, capsys):
    data, html = _explain(tmp_path, tiny_ner, "Angela Merkel visited Paris")
    assert data["task"] == "ner"
    names = [t["name"] for t in data["targets"]]
    assert names == ["PER: Angela", "PER: Merkel", "PER: visited", "PER: Paris"]  # B-PER everywhere: 4 entities
    for t in data["targets"]:
        assert t["label"] == "B-PER"
        word = t["name"].split(": ")[1].lower()
        assert data["tokens"][t["position"]] == word[:len(data["tokens"][t["position"]])]
        assert len(t["attributions"]) == len(data["tokens"]) and None not in t["attributions"]
        assert set(t["probabilities"]) == set(NER_LABELS) and t["probabilities"]["B-PER"] > 0.5
        assert t["convergence_delta"] >= 0
    assert data["targets"][0]["attributions"] != data["targets"][1]["attributions"]
    assert html.count('class="tok') == len(data["tokens"]) and html.count("<option value=") >= 4
    printed = capsys.readouterr().out
    assert printed.count("convergence delta") == 4


def test_token_classifier_target_label_and_completeness(tiny_ner):
    """Attributions to a chosen label at an entity's token add up to the change of its probability."""
    from danlu.explain.attribution import baseline_ids, integrated_gradients
    from danlu.explain.loading import load_differentiable
    from danlu.explain.targets import explain_input

    loaded, _ = load_differentiable(tiny_ner, "cpu")
    subject = explain_input(loaded, text="Angela visited Paris", target="B-LOC")
    assert [t.label for t in subject.targets] == ["B-LOC"] * 3
    t = subject.targets[2]
    attributions, delta, _ = integrated_gradients(loaded.model, loaded.tokenizer, t.batch, t.score, steps=40)
    with torch.no_grad():
        p = t.score(loaded.model(**t.batch))
        p0 = t.score(loaded.model(**{**t.batch, "input_ids": baseline_ids(loaded.tokenizer, t.batch["input_ids"])}))
    assert abs(float(attributions.sum()) - float(p - p0)) <= delta + 1e-6
    assert float(p) == pytest.approx(t.probabilities["B-LOC"], abs=1e-5)


def test_qa_explains_the_start_and_end_of_the_predicted_answer(tiny_qa, tmp_path):
    from danlu.explain.loading import load
    from danlu.tasks import qa

    question, context = "Where does Angela live?", "Angela lives in Paris, a city in France, since 1990."
    data, html = _explain(tmp_path, tiny_qa, "--question", question, "--context", context)
    loaded = load(tiny_qa, "cpu", task="qa")
    predicted = qa.predict(loaded.model, loaded.tokenizer, [{"question": question, "context": context}], [], 128)[0]
    assert data["prediction"] == predicted["answer"]
    start, end = data["targets"]
    assert start["name"].startswith("answer start") and end["name"].startswith("answer end")
    assert start["position"] <= end["position"]
    answer_tokens = loaded.tokenizer.tokenize(predicted["answer"])
    assert data["tokens"][start["position"]] == answer_tokens[0]
    assert data["tokens"][end["position"]] == answer_tokens[-1]
    assert "[SEP]" in data["tokens"] and len(start["attributions"]) == len(data["tokens"])
    assert len(start["probabilities"]) == 5


def test_decoder_explains_each_token_of_a_greedy_continuation(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data, _ = _explain(tmp_path, tiny_llama, "The capital of France is", "--max-new-tokens", "3")
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "The capital of France is"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    greedy = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
    assert len(data["targets"]) == 3 and len(data["tokens"]) == ids.shape[1] + 3
    for k, t in enumerate(data["targets"]):
        at = ids.shape[1] + k
        assert t["position"] == at and data["tokens"][at] == tok.decode([int(greedy[k])])
        assert all(a is not None for a in t["attributions"][:at]) and t["attributions"][at:] == [None] * (3 - k)
        assert max(t["probabilities"].values()) == pytest.approx(list(t["probabilities"].values())[0])
    assert len(data["attentions"][0][0]) == len(data["tokens"])


def test_bad_input_per_task_is_one_line_and_exit_2(tiny_ner, tiny_qa, tiny_llama, tmp_path, capsys):
    out = tmp_path / "x.html"
    cases = [
        ([tiny_ner, "Angela", "--target", "B-ORG"], "not a label of this model"),
        ([tiny_qa, "a text"], "--question Q --context C"),
        ([tiny_qa, "--question", "where?"], "--question Q --context C"),
        ([tiny_qa, "--question", "where?", "--context", "here", "--target", "x"], "--target is for classifiers"),
        ([tiny_llama, "hello", "--question", "q"], "--question/--context are for qa models"),
        ([tiny_llama, "   "], "tokenizes to nothing"),
        ([tiny_ner, "--data", "conll2003"], "for classifiers"),
    ]
    for argv, message in cases:
        assert main(["explain", *map(str, argv), "--out", str(out), "--steps", "2"]) == 2, argv
        last = capsys.readouterr().err.strip().splitlines()[-1]  # (after transformers' loading bars)
        assert last.startswith("error: ") and message in last, (argv, last)
        assert not out.exists()


def test_a_text_without_entities_has_nothing_to_explain(tiny_ner, tmp_path, capsys):
    from transformers import AutoModelForTokenClassification

    folder = tmp_path / "all-o"
    model = AutoModelForTokenClassification.from_pretrained(str(tiny_ner))
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([9.0, 0.0, 0.0, 0.0, 0.0]))
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_ner / name).read_bytes())
    assert main(["explain", str(folder), "nobody here", "--out", str(tmp_path / "x.html")]) == 2
    assert "nothing to explain: the model finds no entity" in capsys.readouterr().err
