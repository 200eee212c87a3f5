"""Question answering: windows and offset mappings, post-processing, the official SQuAD scoring,
readers and their errors, the objective, predict, on tiny random models (seconds)."""

import json

import numpy as np
import pytest
import torch

from danlu.data.squad import QAExample, exact_match, load_squad, normalize_answer, read_qa_file, squad_metrics, token_f1
from danlu.errors import DanluError
from danlu.tasks import get_task

qa = get_task("qa")
MAX_LENGTH, STRIDE = 48, 12


@pytest.fixture(scope="module")
def tiny_qa(tiny_bert):
    torch.manual_seed(0)
    model = qa.build_model(tiny_bert, []).eval()
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(str(tiny_bert))


def _example(context: str, answer: str, qid: str = "q1", question: str = "what is it?", occurrence: int = 0):
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return QAExample(qid, question, context, (answer,), (start,))


LONG = " ".join(f"sentence number {i} talks about topic {i * 7} in some detail." for i in range(30))
MIXED = ("北京是中国的首都，人口很多。 The emoji 😀 marks joy and the flag 🇨🇳 marks China. "
         "东京是日本的首都。 Zürich liegt in der Schweiz, naïve café façade. ") * 6


# ---- windows and offsets ------------------------------------------------------------------------


def test_long_context_is_split_into_overlapping_windows_that_cover_it(tiny_qa):
    _, tokenizer = tiny_qa
    example = _example(LONG, "topic 140")
    features = qa.prepare_validation_features(tokenizer, [example], MAX_LENGTH, STRIDE)
    assert len(features) > 5
    spans = [[o for o in f["offset_mapping"] if o is not None] for f in features]
    assert all(len(f["input_ids"]) <= MAX_LENGTH for f in features)
    for left, right in zip(spans, spans[1:]):  # neighbours share exactly `doc_stride` context tokens
        assert left[-STRIDE:] == right[:STRIDE]
    covered = sorted({o for span in spans for o in span})
    all_tokens = tokenizer(LONG, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert covered == sorted(set(map(tuple, all_tokens)))


@pytest.mark.parametrize("answer, occurrence", [("topic 140", 0), ("sentence number 29", 0), ("sentence", 0)])
def test_train_windows_point_at_the_answer_or_at_cls(tiny_qa, answer, occurrence):
    _, tokenizer = tiny_qa
    example = _example(LONG, answer, occurrence=occurrence)
    train = qa.prepare_train_features(tokenizer, [example], MAX_LENGTH, STRIDE)
    valid = qa.prepare_validation_features(tokenizer, [example], MAX_LENGTH, STRIDE)
    assert len(train) == len(valid) > 1
    holding = 0
    for t, v in zip(train, valid):
        start, end = t["start_positions"], t["end_positions"]
        if start == end == 0:  # CLS: the window does not hold the whole answer
            continue
        holding += 1
        assert LONG[v["offset_mapping"][start][0]:v["offset_mapping"][end][1]] == answer
    assert holding >= 1 and holding < len(train)


def test_an_answer_at_the_end_of_the_context_stays_inside_it(tiny_qa):
    """The recipe's loop would run on to the closing [SEP] (start after end); ours stops at the context."""
    _, tokenizer = tiny_qa
    example = _example("The capital of France is Paris", "Paris")
    feature = qa.prepare_train_features(tokenizer, [example], MAX_LENGTH, STRIDE)[0]
    offsets = qa.prepare_validation_features(tokenizer, [example], MAX_LENGTH, STRIDE)[0]["offset_mapping"]
    assert feature["start_positions"] == feature["end_positions"] == len(feature["input_ids"]) - 2
    assert example.context[offsets[feature["start_positions"]][0]:offsets[feature["end_positions"]][1]] == "Paris"


@pytest.mark.parametrize("answer, occurrence", [("首都", 0), ("😀", 0), ("🇨🇳", 2), ("Zürich", 4), ("naïve café", 5),
                                                ("东京是日本", 3)])
def test_multibyte_answers_round_trip_through_offsets(tiny_qa, answer, occurrence):
    """Offsets count characters of the Python string (not bytes): CJK, emoji and accents map back."""
    _, tokenizer = tiny_qa
    example = _example(MIXED, answer, occurrence=occurrence)
    train = qa.prepare_train_features(tokenizer, [example], MAX_LENGTH, STRIDE)
    valid = qa.prepare_validation_features(tokenizer, [example], MAX_LENGTH, STRIDE)
    found = [MIXED[v["offset_mapping"][t["start_positions"]][0]:v["offset_mapping"][t["end_positions"]][1]]
             for t, v in zip(train, valid) if t["start_positions"]]
    assert found and set(found) == {answer}
    # Hand-made logits that peak at the answer's tokens in one window come back as its characters.
    i = next(i for i, t in enumerate(train) if t["start_positions"])
    logits = [(np.zeros(len(f["input_ids"]), np.float32), np.zeros(len(f["input_ids"]), np.float32)) for f in valid]
    logits[i][0][train[i]["start_positions"]] = 9.0
    logits[i][1][train[i]["end_positions"]] = 9.0
    best = qa.best_answers([example], valid, logits)[0]
    assert (best.text, best.start, best.end) == (answer, example.answer_starts[0],
                                                 example.answer_starts[0] + len(answer))


def test_an_overlong_question_is_cut_not_refused(tiny_qa):
    model, tokenizer = tiny_qa
    result = qa.predict(model, tokenizer, [{"question": "why " * 200, "context": LONG}], [], MAX_LENGTH,
                        doc_stride=STRIDE)[0]
    assert LONG[result["start"]:result["end"]] == result["answer"] != ""


def test_doc_stride_must_leave_room(tiny_qa):
    _, tokenizer = tiny_qa
    example = _example(LONG, "topic 140")
    with pytest.raises(DanluError, match=r"--doc-stride must be in \[1, 108\] for --max-length 128"):
        qa.prepare_train_features(tokenizer, [example], 128, 128)
    assert qa.prepare_train_features(tokenizer, [example], 128, 108)


# ---- post-processing on hand-made logits --------------------------------------------------------


def _window(offsets):
    return {"input_ids": [0] * len(offsets), "example_index": 0, "offset_mapping": offsets}


def test_best_span_is_valid_and_chosen_over_all_windows():
    context = "alpha beta gamma delta epsilon"
    example = QAExample("x", "q", context, ("gamma",), (11,))
    # Tokens: [CLS] q [SEP] alpha beta gamma | second window: [CLS] q [SEP] gamma delta epsilon
    w1 = _window([None, None, None, (0, 5), (6, 10), (11, 16)])
    w2 = _window([None, None, None, (11, 16), (17, 22), (23, 30)])
    s1 = np.array([50, 40, 0, 1, 2, 3], np.float32)  # CLS and the question score highest: never chosen
    e1 = np.array([50, 40, 0, 9, 1, 1], np.float32)  # an end before the start: invalid
    s1[5] = 8.0
    s2 = np.array([0, 0, 0, 1, 7, 1], np.float32)
    e2 = np.array([0, 0, 0, 0, 1, 6], np.float32)
    answers = qa.best_answers([example], [w1, w2], [(s1, e1), (s2, e2)])
    # window 1: best valid pairs are (5,5) = 8+1 = 9; window 2: (4,5) = 7+6 = 13 -> "delta epsilon"
    assert (answers[0].text, answers[0].start, answers[0].end) == ("delta epsilon", 17, 30)
    assert 0 < answers[0].score <= 1


def test_max_answer_length_limits_the_span():
    offsets = [None] + [(2 * i, 2 * i + 1) for i in range(40)]
    context = " ".join("x" * 40)
    start, end = np.zeros(41, np.float32), np.zeros(41, np.float32)
    start[1], end[40] = 10, 10  # a 40-token span: too long for 30
    end[5] = 5
    best = qa.best_answers([QAExample("x", "q", context)], [_window(offsets)], [(start, end)], max_answer_length=30)[0]
    assert (best.start, best.end) == (0, 9)
    best = qa.best_answers([QAExample("x", "q", context)], [_window(offsets)], [(start, end)], max_answer_length=40)[0]
    assert (best.start, best.end) == (0, 79)


# ---- official SQuAD v1.1 scoring ----------------------------------------------------------------


@pytest.mark.parametrize("text, normal", [
    ("The Denver Broncos", "denver broncos"),
    ("  an   apple, a pear!  ", "apple pear"),
    ("Theatre anthem", "theatre anthem"),  # articles only as whole words
    ("Saint-Étienne's \"A\" team.", "saintétiennes team"),
    ("1,000.5 km", "10005 km"),
])
def test_normalisation_as_the_official_script(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_and_f1_take_the_best_gold_answer():
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert token_f1("Denver Broncos", "the Denver Broncos football team") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("x b c", "b c d") == pytest.approx(2 / 3)
    assert token_f1("a b c", "b c d") == pytest.approx(0.8)  # "a" is an article: dropped
    assert token_f1("the", "a") == 0.0  # both normalise to nothing
    metrics = squad_metrics(["Denver Broncos", "Paris", "nothing"],
                            [("Carolina Panthers", "Denver Broncos"), ("in Paris, France",), ("x",)])
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx((1 + 2 * 1 * (1 / 3) / (1 + 1 / 3) + 0) / 3)
    assert metrics["examples"] == 3
    assert qa.format_metrics(metrics) == "exact_match 33.33  f1 50.00  questions 3"


# ---- readers ------------------------------------------------------------------------------------


def _squad(tmp_path, qas, name="train.json", version="1.1", context="Paris is the capital of France."):
    path = tmp_path / name
    path.write_text(json.dumps({"version": version, "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": qas}]}]}))
    return path


def test_reads_squad_json_and_jsonl(tmp_path):
    path = _squad(tmp_path, [{"id": "a", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]}])
    assert read_qa_file(path) == [QAExample("a", "Capital?", "Paris is the capital of France.", ("Paris",), (0,))]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "b", "question": "Of what?", "context": "Paris is in France.",
                                "answers": {"text": ["France", "France."], "answer_start": [12, 12]}}) + "\n")
    assert read_qa_file(rows)[0].answer_texts == ("France", "France.")


def test_squad_v2_unanswerable_questions_are_skipped_and_counted(tmp_path, capsys):
    path = _squad(tmp_path, [
        {"id": "a", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}], "is_impossible": False},
        {"id": "b", "question": "Moon?", "answers": [], "plausible_answers": [], "is_impossible": True}],
        version="v2.0")
    assert [e.id for e in read_qa_file(path)] == ["a"]
    assert "skipped 1 unanswerable questions" in capsys.readouterr().err


@pytest.mark.parametrize("qa_row, message", [
    ({"id": "q7", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 3}]},
     "question 'q7': answer_start 3 does not point at the answer 'Paris'"),
    ({"id": "q7", "question": "  ", "answers": [{"text": "Paris", "answer_start": 0}]}, "question 'q7': empty question"),
    ({"id": "q7", "answers": [{"text": "Paris", "answer_start": 0}]}, "question 'q7': missing or non-text 'question'"),
    ({"id": "q7", "question": "Capital?"}, "question 'q7': missing 'answers'"),
    ({"question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]}, "a question without an 'id'"),
])
def test_bad_squad_json_is_a_one_line_error_naming_file_and_id(tmp_path, qa_row, message):
    path = _squad(tmp_path, [qa_row])
    with pytest.raises(DanluError) as error:
        read_qa_file(path)
    assert str(path) in str(error.value) and message in str(error.value) and "\n" not in str(error.value)


def test_empty_context_and_bad_jsonl_rows(tmp_path):
    with pytest.raises(DanluError, match="question 'a': empty context"):
        read_qa_file(_squad(tmp_path, [{"id": "a", "question": "Q?", "answers": []}], context=""))
    rows = tmp_path / "rows.jsonl"
    good = {"id": "a", "question": "Q?", "context": "c d", "answers": {"text": ["d"], "answer_start": [2]}}
    rows.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "answers": {"text": ["d"],
                                                                                         "answer_start": [0]}}))
    with pytest.raises(DanluError, match=rf"{rows}:2: question 'b': answer_start 0 does not point"):
        read_qa_file(rows)


def test_folder_splits_and_seeded_train_sample(tmp_path):
    qas = [{"id": f"q{i}", "question": f"Q{i}?", "answers": [{"text": "Paris", "answer_start": 0}]} for i in range(20)]
    _squad(tmp_path, qas, "train.json")
    _squad(tmp_path, qas[:3], "dev.json")
    data = load_squad(str(tmp_path), seed=1, max_train_examples=5)
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [5, 3, 3]
    assert data.split_info["test"] == "the validation set (no test file)"
    assert [e.id for e in data.splits["train"]] == [e.id for e in load_squad(str(tmp_path), seed=1,
                                                                             max_train_examples=5).splits["train"]]
    assert [e.id for e in data.splits["train"]] != [e.id for e in load_squad(str(tmp_path), seed=2,
                                                                             max_train_examples=5).splits["train"]]


def test_packaged_squad_is_the_official_v1_1():
    data = load_squad("squad")
    assert {s: len(e) for s, e in data.splits.items()} == {"train": 87599, "validation": 10570, "test": 10570}
    with pytest.raises(DanluError, match="did you mean 'squad'"):
        load_squad("squadd")


# ---- objective, predict, inputs -----------------------------------------------------------------


def test_objective_equals_the_models_own_loss(tiny_qa):
    model, tokenizer = tiny_qa
    examples = [_example(LONG, "topic 140"), _example(MIXED, "首都", "q2")]
    objective, lengths = qa.make_objective(tokenizer, examples, [], MAX_LENGTH, doc_stride=STRIDE)
    same = [i for i, n in enumerate(lengths) if n == MAX_LENGTH][:4]  # no padding: the HF loss applies as is
    batch = objective.collate(same)
    assert objective.count(batch) == 4
    with torch.no_grad():
        reference = model(**batch).loss * 4
        ours = objective.loss_sum(model, batch)
    torch.testing.assert_close(ours, reference)
    # Padding does not change a window's loss.
    short = min(range(len(lengths)), key=lengths.__getitem__)
    with torch.no_grad():
        alone = objective.loss_sum(model, objective.collate([short]))
        padded = objective.loss_sum(model, objective.collate([short, same[0]])) - objective.loss_sum(
            model, objective.collate([same[0]]))
    torch.testing.assert_close(alone, padded, atol=1e-4, rtol=1e-4)


def test_predict_returns_character_spans_of_the_context(tiny_qa):
    model, tokenizer = tiny_qa
    inputs = [{"question": "Which topic?", "context": LONG}, {"question": "首都?", "context": MIXED[:60]}]
    results = qa.predict(model, tokenizer, inputs, [], MAX_LENGTH, batch_size=3, doc_stride=STRIDE)
    assert len(results) == 2
    for x, r in zip(inputs, results):
        assert set(r) == {"answer", "start", "end", "score"}
        assert x["context"][r["start"]:r["end"]] == r["answer"] and 0 < r["score"] <= 1
    # Batching does not change answers.
    assert qa.predict(model, tokenizer, inputs[:1], [], MAX_LENGTH, batch_size=1, doc_stride=STRIDE)[0] == results[0]
    line = qa.format_prediction(inputs[0], results[0])
    assert line.startswith(results[0]["answer"] + "\tscore ") and f"characters {results[0]['start']}-" in line


def test_inputs_from_flags_files_and_requests(tmp_path):
    assert qa.read_inputs([], "", question="Who?", context="Me.") == [{"question": "Who?", "context": "Me."}]
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"question": "Q?", "context": "C."}\n\n{"question": "", "context": "C."}\n')
    with pytest.raises(DanluError, match=rf"{rows}:3: empty question"):
        qa.read_inputs([], str(rows))
    with pytest.raises(DanluError, match="takes --question and --context"):
        qa.read_inputs(["some text"], "")
    with pytest.raises(DanluError, match="empty context"):
        qa.read_inputs([], "", question="Who?", context=" ")
    assert qa.validate_request({"question": "Q?", "context": "C."}) == [{"question": "Q?", "context": "C."}]
    for bad, message in (([], "'input' is empty"), (["text"], r"input\[0\]: expected an object"),
                         ([{"question": "Q?"}], r"input\[0\]: missing or non-text 'context'")):
        with pytest.raises(ValueError, match=message):
            qa.validate_request(bad)
    example = _example(LONG, "topic 140")
    assert qa.input_of(example) == {"question": example.question, "context": LONG}


def test_finetune_on_bad_squad_is_one_line_exit_2_and_writes_nothing(tiny_bert, tmp_path, capsys):
    from danlu.cli import main

    path = _squad(tmp_path, [{"id": "q9", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 5}]}])
    out = tmp_path / "qa"
    assert main(["finetune", "--task", "qa", "--model", str(tiny_bert), "--data", str(path), "--out", str(out),
                 "--max-length", "64", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: question 'q9': answer_start 5 does not point at the answer 'Paris' "
                   "(the context has ' is t' there)"]
    assert not out.exists() and not out.with_name("qa.run").exists()
