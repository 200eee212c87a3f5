"""The qa task through the stages that take an artifact: serve (/v1/qa), export (ONNX parity), compress,
on a tiny BERT fine-tuned for a few steps on a slice of the packaged SQuAD."""

import concurrent.futures
import json
from pathlib import Path

import httpx
import pytest
from serving import running_server

from danlu.cli import main
from danlu.data.squad import load_squad
from test_qa_e2e import _write_squad

LONG_CONTEXT = " ".join(f"Paragraph {i} says that the river number {i} flows north into lake {i * 3}."
                        for i in range(40))  # several windows of 64 tokens


@pytest.fixture(scope="module")
def squad_slice(tmp_path_factory) -> Path:
    squad = load_squad("squad", seed=0, max_train_examples=64)
    folder = tmp_path_factory.mktemp("squad-slice")
    _write_squad(folder / "train.json", squad.splits["train"])
    _write_squad(folder / "dev.json", squad.splits["validation"][:16])
    return folder


@pytest.fixture(scope="module")
def qa_artifact(tiny_bert, squad_slice, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qa-art") / "qa"
    assert main(["finetune", "--task", "qa", "--model", str(tiny_bert), "--data", str(squad_slice), "--out", str(out),
                 "--max-length", "64", "--max-steps", "4", "--batch-size", "16", "--lr", "1e-3",
                 "--log-every", "2"]) == 0
    return out


def _pytorch_answers(artifact, inputs):
    from danlu.runtime import load
    from danlu.tasks import qa

    loaded = load(str(artifact), device="cpu")
    return qa.predict(loaded.model, loaded.tokenizer, inputs, loaded.labels, loaded.max_length)


def test_serve_answers_with_spans_micro_batched_and_refuses_bad_items(qa_artifact, tmp_path):
    inputs = [{"question": "Where does river 7 flow?", "context": LONG_CONTEXT},
              {"question": "Who wrote Hamlet?", "context": "Hamlet was written by William Shakespeare."},
              {"question": "北京是哪国的首都?", "context": "北京是中国的首都 😀, a city of 21 million people."}]
    expected = _pytorch_answers(qa_artifact, inputs)
    with running_server(qa_artifact, "--threads", "1", "--batch-wait-ms", "20", "--max-batch-size", "4",
                        log_dir=tmp_path) as server:
        name = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
        r = httpx.post(server.url + "/v1/qa", json={"model": name, "input": inputs}, timeout=120)
        assert r.status_code == 200, r.text
        rows = r.json()["data"]
        assert len(rows) == 3
        for item, row, e in zip(inputs, rows, expected):
            assert item["context"][row["start"]:row["end"]] == row["answer"] == e["answer"]
            assert row["score"] == pytest.approx(e["score"], abs=1e-4)

        def one(item):  # concurrent single requests are micro-batched; answers do not change
            return httpx.post(server.url + "/v1/qa", json={"model": name, "input": [item]}, timeout=120).json()

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            singles = list(pool.map(one, inputs * 2))
        assert [s["data"][0]["answer"] for s in singles] == [e["answer"] for e in expected] * 2
        for bad, message in (([{"question": "Q?"}], "missing or non-text 'context'"),
                             ([{"question": " ", "context": "C."}], "empty question"), ([], "'input' is empty")):
            r = httpx.post(server.url + "/v1/qa", json={"model": name, "input": bad})
            assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_export_onnx_keeps_logits_and_answers(qa_artifact, squad_slice, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(qa_artifact), "--out", str(out), "--eval-data", str(squad_slice)]) == 0
    manifest = json.loads((out / "danlu.json").read_text())
    assert manifest["task"] == "qa"
    inputs = [{"question": "Where does river 7 flow?", "context": LONG_CONTEXT},
              {"question": "Who wrote Hamlet?", "context": "Hamlet was written by William Shakespeare."}]
    for ours, reference in zip(_pytorch_answers(out, inputs), _pytorch_answers(qa_artifact, inputs)):
        assert (ours["answer"], ours["start"], ours["end"]) == (reference["answer"], reference["start"],
                                                               reference["end"])
        assert ours["score"] == pytest.approx(reference["score"], abs=1e-3)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(squad_slice), "--split", "validation", "--json"]) == 0
    onnx_scores = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(qa_artifact), "--data", str(squad_slice), "--split", "validation", "--json"]) == 0
    torch_scores = json.loads(capsys.readouterr().out)
    assert onnx_scores["f1"] == pytest.approx(torch_scores["f1"]) and onnx_scores["examples"] == 16


def test_compress_measures_f1_of_each_variant(qa_artifact, squad_slice, tmp_path):
    out = tmp_path / "compress"
    assert main(["compress", str(qa_artifact), "--eval-data", str(squad_slice), "--out", str(out),
                 "--methods", "int8-dynamic", "onnx", "--repeats", "1", "--latency-samples", "2",
                 "--throughput-batches", "1", "--max-accuracy-drop", "100"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["variant"]: r for r in results["rows"]}
    assert {"int8-dynamic", "onnx"} <= set(rows)
    assert all(r.get("error") is None for r in rows.values()), rows
    assert results["quality_metric"] == "f1"
    original = next(r for r in results["rows"] if r["variant"] not in ("int8-dynamic", "onnx"))
    assert 0 <= original["quality"] <= 1 and original["f1"] == original["quality"]
    assert rows["onnx"]["accuracy_drop"] == pytest.approx(0, abs=1e-4)  # ONNX fp32 keeps the answers
    assert rows["int8-dynamic"]["accuracy_drop"] == pytest.approx(100 * (original["f1"] - rows["int8-dynamic"]["f1"]),
                                                                  abs=1e-3)


def test_lora_qa_artifact_predicts_like_its_merged_model(tiny_bert, squad_slice, tmp_path, capsys):
    out = tmp_path / "qa-lora"
    assert main(["finetune", "--task", "qa", "--model", str(tiny_bert), "--data", str(squad_slice), "--out", str(out),
                 "--max-length", "64", "--max-steps", "3", "--batch-size", "16", "--lr", "1e-3", "--lora",
                 "--lora-r", "4"]) == 0
    assert (out / "adapter_config.json").exists()
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "QUESTION_ANS"
    merged = tmp_path / "qa-merged"
    assert main(["merge", str(out), "--out", str(merged)]) == 0
    inputs = [{"question": "Where does river 7 flow?", "context": LONG_CONTEXT}]
    lora, plain = _pytorch_answers(out, inputs)[0], _pytorch_answers(merged, inputs)[0]
    assert (lora["start"], lora["end"]) == (plain["start"], plain["end"])
    assert lora["score"] == pytest.approx(plain["score"], abs=1e-4)


def test_dev_set_as_test_split_is_scored_once_at_the_best_step(qa_artifact):
    """The folder has no test file, so the test split is the dev set: the test metrics are the best
    validation's, with every metric of the task (the curve keeps only f1 and exact_match)."""
    import json

    metrics = json.loads((qa_artifact / "danlu.json").read_text())["metrics"]
    assert metrics["test"]["f1"] == metrics["best_validation"]["f1"]
    assert metrics["test"]["exact_match"] == metrics["best_validation"]["exact_match"]
    assert metrics["test"]["examples"] == 16 and set(metrics["test"]) > set(metrics["best_validation"])
