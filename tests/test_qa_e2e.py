"""Question answering end to end on the real packaged MiniLM and SQuAD v1.1: a few dozen steps through
`danlu finetune --task qa`, `danlu evaluate` and `danlu predict`."""

import json

import pytest

from danlu.cli import main
from danlu.data.squad import load_squad


def _write_squad(path, examples):
    """Examples back into a SQuAD v1.1 file (one paragraph per question: the reader must not care)."""
    data = [{"title": e.id, "paragraphs": [{"context": e.context, "qas": [
        {"id": e.id, "question": e.question,
         "answers": [{"text": t, "answer_start": s} for t, s in zip(e.answer_texts, e.answer_starts)]}]}]}
        for e in examples]
    path.write_text(json.dumps({"version": "1.1", "data": data}))


@pytest.mark.e2e
def test_finetune_evaluate_predict_on_real_squad(tmp_path, capsys):
    squad = load_squad("squad", seed=0, max_train_examples=240)
    folder = tmp_path / "squad-small"
    folder.mkdir()
    _write_squad(folder / "train.json", squad.splits["train"])
    _write_squad(folder / "dev.json", squad.splits["validation"][:40])
    out = tmp_path / "qa"
    assert main(["finetune", "--task", "qa", "--model", "minilm-l6", "--data", str(folder), "--out", str(out),
                 "--max-length", "192", "--max-steps", "30", "--batch-size", "8", "--lr", "3e-4",
                 "--eval-every", "15", "--log-every", "1", "--seed", "0"]) == 0
    manifest = json.loads((out / "danlu.json").read_text())
    assert manifest["task"] == "qa" and manifest["primary_metric"] == "f1"
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [c["loss"] for c in curve if "loss" in c]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # from ~ln(192) towards the answers
    assert [c["step"] for c in curve if "eval_f1" in c] == [15, 30]
    test = manifest["metrics"]["test"]
    assert test["examples"] == 40 and 0 < test["f1"] <= 1 and test["exact_match"] <= test["f1"]
    capsys.readouterr()

    assert main(["evaluate", str(out), "--data", str(folder), "--split", "validation"]) == 0
    printed = capsys.readouterr().out
    scores = json.loads((out / "eval-validation.json").read_text())
    assert scores["f1"] == pytest.approx(test["f1"]) and scores["examples"] == 40
    assert f"f1 {100 * scores['f1']:.2f}  questions 40" in printed

    context = ("Hamlet is a tragedy written by William Shakespeare sometime between 1599 and 1601. "
               "It is Shakespeare's longest play.")
    assert main(["predict", str(out), "--question", "Who wrote Hamlet?", "--context", context, "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert context[row["start"]:row["end"]] == row["answer"] and 0 < row["score"] <= 1
