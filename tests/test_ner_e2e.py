"""NER end to end on the real packaged MiniLM and CoNLL-2003: a few dozen steps learn entities."""

from pathlib import Path

import pytest


@pytest.mark.e2e
def test_minilm_learns_conll2003_entities_in_a_few_dozen_steps(tmp_path: Path):
    import torch
    from transformers import AutoTokenizer, set_seed

    from danlu.assets import install
    from danlu.config import TrainArgs
    from danlu.tasks import ner
    from danlu.tasks.base import DataSpec
    from danlu.train.loop import train

    model_path = install("minilm-l6", quiet=True)
    install("conll2003", quiet=True)
    data = ner.load_data(DataSpec("conll2003", max_train_examples=2000))
    assert data.split_info["sizes"] == {"train": 2000, "validation": 3250, "test": 3453}
    assert data.labels == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    set_seed(0)
    model = ner.build_model(model_path, data.labels)
    test = data.splits["test"][:300]
    before = ner.score(model.eval(), tokenizer, test, data.labels, 128)
    objective, lengths = ner.make_objective(tokenizer, data.splits["train"], data.labels, 128)
    train(model, objective, lengths, TrainArgs(max_steps=60, batch_size=16, lr=2e-4, log_every=10), tmp_path)
    after = ner.score(model.eval(), tokenizer, test, data.labels, 128)
    assert before["f1"] < 0.1 < 0.25 < after["f1"], (before["f1"], after["f1"])
    assert after["loss"] < before["loss"] / 3
    found = ner.predict(model, tokenizer, ["Angela Merkel met Emmanuel Macron in Paris."], data.labels, 128)
    entities = found[0]["entities"]
    assert {"type": "LOC", "text": "Paris", "start": 37, "end": 42} in [
        {k: e[k] for k in ("type", "text", "start", "end")} for e in entities], entities
    assert torch.isfinite(torch.tensor(after["loss"]))
