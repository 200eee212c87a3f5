"""danlu explain on real packaged models, one per task beyond classification: MiniLM fine-tuned a few dozen
steps on CoNLL-2003 (entities) and on SQuAD (answer start and end), and SmolLM2-135M (a greedy continuation)."""

import json

import pytest

from danlu.cli import main


def _finetune_small(tmp_path, task: str, splits: dict, write, *flags):
    """Fine-tune MiniLM on a small folder of the given splits (short evaluation and test)."""
    folder = tmp_path / f"{task}-data"
    folder.mkdir()
    for name, examples in splits.items():
        write(folder / name, examples)
    out = tmp_path / task
    assert main(["finetune", "--task", task, "--model", "minilm-l6", "--data", str(folder), "--out", str(out),
                 "--seed", "0", "--log-every", "10", *flags]) == 0
    return out


def _explain(tmp_path, *argv, steps: int = 8):
    out = tmp_path / "explain.html"
    assert main(["explain", *map(str, argv), "--out", str(out), "--steps", str(steps)]) == 0
    return json.loads(out.with_suffix(".json").read_text())


def _write_tagged(path, sentences):
    path.with_suffix(".jsonl").write_text("".join(json.dumps({"tokens": s.tokens, "tags": s.tags}) + "\n"
                                                  for s in sentences))


@pytest.mark.e2e
def test_ner_artifact_is_explained_per_entity(tmp_path):
    from danlu.tasks import ner
    from danlu.tasks.base import DataSpec

    data = ner.load_data(DataSpec("conll2003", max_train_examples=2000))
    splits = {"train": data.splits["train"], "validation": data.splits["validation"][:40],
              "test": data.splits["test"][:40]}
    model = _finetune_small(tmp_path, "ner", splits, _write_tagged, "--max-steps", "60", "--batch-size", "16",
                            "--lr", "2e-4", "--max-length", "128")
    text = "Angela Merkel met Emmanuel Macron in Paris."
    e = _explain(tmp_path, model, text, steps=32)
    assert e["task"] == "ner" and e["prediction"] == "PER: Angela Merkel; PER: Emmanuel Macron; LOC: Paris"
    assert [(t["name"], t["label"], e["tokens"][t["position"]]) for t in e["targets"]] == [
        ("PER: Angela Merkel", "B-PER", "angela"), ("PER: Emmanuel Macron", "B-PER", "emmanuel"),
        ("LOC: Paris", "B-LOC", "paris")]
    for t in e["targets"]:
        assert max(t["probabilities"], key=t["probabilities"].get) == t["label"]
        assert len(t["attributions"]) == len(e["tokens"]) and t["convergence_delta"] < 0.05
        # the entity's own first word carries the largest attribution to its tag
        assert max(range(len(e["tokens"])), key=lambda i: t["attributions"][i]) == t["position"]


def _write_squad(path, examples):
    data = [{"title": x.id, "paragraphs": [{"context": x.context, "qas": [
        {"id": x.id, "question": x.question,
         "answers": [{"text": t, "answer_start": s} for t, s in zip(x.answer_texts, x.answer_starts)]}]}]}
        for x in examples]
    path.with_suffix(".json").write_text(json.dumps({"version": "1.1", "data": data}))


@pytest.mark.e2e
def test_qa_artifact_is_explained_at_the_answer_start_and_end(tmp_path):
    from danlu.data.squad import load_squad

    squad = load_squad("squad", seed=0, max_train_examples=160)
    model = _finetune_small(tmp_path, "qa", {"train": squad.splits["train"], "dev": squad.splits["validation"][:16]},
                            _write_squad, "--max-steps", "20", "--batch-size", "8", "--lr", "3e-4",
                            "--max-length", "192")
    context = ("Hamlet is a tragedy written by William Shakespeare sometime between 1599 and 1601. "
               "It is Shakespeare's longest play.")
    e = _explain(tmp_path, model, "--question", "Who wrote Hamlet?", "--context", context)
    start, end = e["targets"]
    assert e["prediction"] and e["prediction"] in context
    assert start["name"].startswith("answer start") and end["name"].startswith("answer end")
    assert 0 < start["position"] <= end["position"] < len(e["tokens"])
    assert e["tokens"].index("[SEP]") < start["position"]  # inside the context, after the question
    for t in (start, end):
        assert len(t["attributions"]) == len(e["tokens"]) and t["convergence_delta"] >= 0


@pytest.mark.e2e
def test_smollm2_is_explained_token_by_token(tmp_path):
    from danlu.explain.loading import load
    from danlu.tasks import sft

    e = _explain(tmp_path, "smollm2-135m", "What is the capital of France?", "--max-new-tokens", "2")
    assert e["task"] == "causal-lm" and len(e["targets"]) == 2
    loaded = load("smollm2-135m", "cpu", task=None)
    greedy = sft.predict(loaded.model, loaded.tokenizer, ["What is the capital of France?"], [], 128,
                         max_new_tokens=2)[0]["generation"]
    assert e["prediction"].strip() == greedy
    for k, t in enumerate(e["targets"]):
        assert e["tokens"][t["position"]] in t["name"]
        assert t["attributions"][t["position"]:] == [None] * (2 - k)
        # 8 steps are far from converged on a 30-layer decoder (about 1 here; ~0.2 at 32 steps): reported, not hidden
        assert 0 <= t["convergence_delta"] < 10
    assert len(e["attentions"]) == 30 and len(e["attentions"][0]) == 9  # SmolLM2-135M: 30 layers, 9 heads
