"""`danlu finetune/evaluate/predict/serve` for NER on a tiny random BERT: the artifact, the entities,
the /v1/ner route, and one-line errors (exit 2, nothing written) for bad NER input."""

import json
import random
import subprocess
import sys

import httpx
import pytest

from tests.serving import running_server

DANLU = [sys.executable, "-m", "danlu"]
PEOPLE = ["Angela Merkel", "Emmanuel Macron", "Joe Biden", "Olaf Scholz", "Rishi Sunak"]
PLACES = ["Paris", "Berlin", "New York", "Tokyo", "Rome"]


def run(*args):
    return subprocess.run([*DANLU, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def conll(tmp_path_factory):
    """120 sentences 'PERSON met friends in PLACE .' in IOB1 (I- opens an entity): easy to learn."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("ner-data") / "people.conll"
    with open(path, "w") as f:
        f.write("-DOCSTART- -X- O\n\n")
        for _ in range(120):
            person, place = rng.choice(PEOPLE).split(), rng.choice(PLACES).split()
            rows = [(w, "I-PER") for w in person] + [("met", "O"), ("friends", "O"), ("in", "O")]
            rows += [(w, "I-LOC") for w in place] + [(".", "O")]
            f.write("".join(f"{w} NNP {t}\n" for w, t in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def tagger(tiny_bert, conll, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "ner"
    r = run("finetune", "--task", "ner", "--model", tiny_bert, "--data", conll, "--out", out, "--epochs", 8,
            "--lr", "3e-3", "--batch-size", 16, "--max-length", 16, "--log-every", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_artifact_is_a_token_classifier(tagger):
    manifest = json.loads((tagger / "danlu.json").read_text())
    assert manifest["task"] == "ner" and manifest["primary_metric"] == "f1"
    assert manifest["labels"] == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    assert manifest["data"]["split"]["tag_scheme"] == ["iob1"]
    assert manifest["data"]["split"]["sizes"] == {"train": 96, "validation": 12, "test": 12}
    assert manifest["metrics"]["test"]["f1"] >= 0.9  # the sentence frame gives the entities away
    assert json.loads((tagger / "config.json").read_text())["architectures"] == ["BertForTokenClassification"]
    assert "f1 **" in (tagger / "report.md").read_text()
    curve = [json.loads(line) for line in (tagger / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_f1" in e for e in curve)


def test_evaluate_and_predict(tagger, conll):
    r = run("evaluate", tagger, "--data", conll, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads(r.stdout)
    saved = json.loads((tagger / "danlu.json").read_text())["metrics"]["test"]
    assert metrics["f1"] == pytest.approx(saved["f1"]) and metrics["examples"] == 12
    assert set(metrics["per_type"]) == {"LOC", "PER"}
    r = run("evaluate", tagger, "--data", conll)
    assert "entities (seqeval strict IOB2, micro)" in r.stdout and "\nPER " in r.stdout

    text = "Emmanuel Macron met friends in New York."
    r = run("predict", tagger, text, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout)
    found = [(e["type"], e["text"], e["start"], e["end"]) for e in row["entities"]]
    assert found == [("PER", "Emmanuel Macron", 0, 15), ("LOC", "New York", 31, 39)]
    assert row["text"] == text and all(0 < e["score"] <= 1 for e in row["entities"])
    r = run("predict", tagger, text)
    assert "PER" in r.stdout and "0-15" in r.stdout


def test_ner_route(tagger, tmp_path):
    from danlu.runtime import load
    from danlu.tasks import ner

    texts = ["Joe Biden met friends in Rome.", "Rishi Sunak met friends in Tokyo.", "nothing here"]
    loaded = load(str(tagger))
    expected = ner.predict(loaded.model, loaded.tokenizer, texts, loaded.labels, loaded.max_length)
    with running_server(tagger, "--served-model-name", "tagger", log_dir=tmp_path) as server:
        r = httpx.post(server.url + "/v1/ner", json={"model": "tagger", "input": texts}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        got = [{"entities": d["entities"]} for d in sorted(body["data"], key=lambda d: d["index"])]
        assert [ner.decision(g) for g in got] == [ner.decision(e) for e in expected]
        assert body["usage"]["prompt_tokens"] > 0
        bad = httpx.post(server.url + "/v1/ner", json={"model": "tagger", "input": [3]}, timeout=60)
        assert bad.status_code == 400 and "input" in bad.json()["error"]["message"]
        models = httpx.get(server.url + "/v1/models", timeout=10).json()
        assert models["data"][0]["kind"] == "token-classifier"


@pytest.mark.parametrize("content, suffix, message", [
    ("Paris B-LOC\nis\n", ".conll", r"bad\.conll:2: expected at least 2 columns"),
    ("Paris LOCATION\n", ".conll", r"bad\.conll:1: tag 'LOCATION' is not IOB/BIOES"),
    ('{"tokens": ["Paris", "is"], "tags": ["B-LOC"]}\n', ".jsonl", r"bad\.jsonl:1: 2 tokens but 1 tags"),
    ("", ".conll", r"bad\.conll: empty file"),
    ("text,label\ngreat,pos\n", ".csv", r"bad\.csv: a \.csv table has no token tags"),
])
def test_bad_ner_data_is_a_one_line_error(tiny_bert, tmp_path, content, suffix, message):
    import re

    data = tmp_path / f"bad{suffix}"
    data.write_text(content)
    out = tmp_path / "out"
    r = run("finetune", "--task", "ner", "--model", tiny_bert, "--data", data, "--out", out, "--max-steps", 1)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and re.search(message, r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "out.run").exists()


def test_evaluate_refuses_tags_the_model_does_not_know(tagger, tmp_path):
    data = tmp_path / "orgs.conll"
    data.write_text("".join(f"ACME{i} B-ORG\nwins O\n\n" for i in range(20)))
    r = run("evaluate", tagger, "--data", data, "--output", tmp_path / "eval.json")
    assert r.returncode == 2 and "tags the model does not know: B-ORG" in r.stderr, r.stderr
    assert not (tmp_path / "eval.json").exists()


def test_lora_tagger_loads_with_its_own_head(tiny_bert, conll, tmp_path):
    """The base folder's config has 2 labels; the adapter's head has 5: loading must build the latter."""
    out = tmp_path / "lora"
    r = run("finetune", "--task", "ner", "--model", tiny_bert, "--data", conll, "--out", out, "--max-steps", 3,
            "--lora", "--batch-size", 16, "--max-length", 16)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("evaluate", out, "--data", conll, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    saved = json.loads((out / "danlu.json").read_text())["metrics"]["test"]
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(saved["accuracy"])


def test_export_onnx_token_classifier_parity_on_logits_and_entities(tagger, conll, tmp_path):
    out = tmp_path / "onnx"
    r = run("export", tagger, "--format", "onnx", "--out", out, "--eval-data", conll)
    assert r.returncode == 0, r.stderr[-2000:]
    parity = json.loads((out / "danlu.json").read_text())["metrics"]["parity"]
    assert parity["examples"] == 12 and parity["max_abs_output_diff"] < 1e-4
    assert parity["prediction_agreement"] == 1.0  # the same entity spans from both
    text = "Joe Biden met friends in Tokyo ."
    torch_rows = json.loads(run("predict", tagger, text, "--json").stdout)
    onnx_rows = json.loads(run("predict", out, text, "--json").stdout)
    spans = lambda row: [(e["type"], e["start"], e["end"]) for e in row["entities"]]  # noqa: E731
    assert spans(onnx_rows) == spans(torch_rows) == [("PER", 0, 9), ("LOC", 25, 30)]


def test_compress_token_classifier_measures_entity_f1(tagger, conll, tmp_path):
    out = tmp_path / "compress"
    r = run("compress", tagger, "--eval-data", conll, "--out", out, "--methods", "int8-dynamic", "onnx-int8",
            "prune-structured", "distill", "--repeats", "1", "--latency-samples", "2", "--throughput-batches", "1",
            "--train-max-steps", "2", "--calibration-samples", "16", "--max-accuracy-drop", "100")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "ner" and results["quality_metric"] == "f1"
    rows = {row["variant"]: row for row in results["rows"]}
    for name in ("original", "int8-dynamic", "onnx-int8", "prune-structured"):
        assert rows[name]["status"] == "ok", rows[name].get("reason")
        assert rows[name]["quality"] == rows[name]["f1"] and 0 <= rows[name]["f1"] <= 1
    assert rows["original"]["f1"] >= 0.9 and rows["int8-dynamic"]["accuracy_drop"] < 10
    assert rows["distill"]["status"] == "skipped" and "classify" in rows["distill"]["reason"]
    assert "| variant | status | f1 | drop (pts) |" in (out / "report.md").read_text()
    evaluated = json.loads(run("evaluate", out / "variants" / "int8-dynamic", "--data", conll, "--json").stdout)
    assert evaluated["f1"] == pytest.approx(rows["int8-dynamic"]["f1"])
