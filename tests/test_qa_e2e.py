"""Question answering end to end on the real packaged MiniLM and SQuAD v1.1: a few dozen steps."""

import pytest
import torch

from danlu.tasks import get_task
from danlu.tasks.base import DataSpec

qa = get_task("qa")


@pytest.mark.e2e
def test_minilm_learns_to_point_at_answers_in_a_few_dozen_steps(tmp_path):
    from transformers import AutoTokenizer, set_seed

    from danlu.artifact import resolve_model
    from danlu.config import TrainArgs
    from danlu.train.loop import EvalResult, train

    model_path = resolve_model("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    data = qa.load_data(DataSpec("squad", max_train_examples=480, seed=0))
    assert len(data.splits["train"]) == 480 and len(data.splits["validation"]) == 10570
    dev = data.splits["validation"][:60]
    set_seed(0)
    model = qa.build_model(model_path, data.labels)
    before = qa.score(model.eval(), tokenizer, dev, [], 256)
    objective, lengths = qa.make_objective(tokenizer, data.splits["train"], [], 256, doc_stride=64)
    assert len(lengths) >= 480 and max(lengths) <= 256
    args = TrainArgs(max_steps=30, batch_size=16, lr=2e-4, warmup_ratio=0.1, seed=0, log_every=5,
                     eval_every=30, save_every=1000)
    evaluate = lambda m: EvalResult(*(lambda s: (s, s["f1"]))(qa.score(m, tokenizer, dev, [], 256)))  # noqa: E731
    result = train(model.train(), objective, lengths, args, tmp_path / "run", evaluate=evaluate)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0  # from ~ln(256) towards the answers
    after = result.best_metrics
    assert after["examples"] == 60 and after["windows"] >= 60
    assert after["f1"] > before["f1"] + 0.05, (before, after)
    answers = qa.predict(model.eval(), tokenizer, [qa.input_of(e) for e in dev[:8]], [], 256, doc_stride=64)
    for example, answer in zip(dev, answers):
        assert example.context[answer["start"]:answer["end"]] == answer["answer"]
    assert torch.isfinite(torch.tensor([a["score"] for a in answers])).all()
