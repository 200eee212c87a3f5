import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from danlu.config import TrainArgs
from danlu.data.classification import load_classification
from danlu.tasks.classify import encode
from danlu.tasks.classify import ClassificationObjective
from danlu.train.loop import train


def setup(tiny_bert, sentiment_csv):
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    data = load_classification(str(sentiment_csv))
    feats = encode(tok, data.splits["train"].texts, 64)
    labels = [data.labels.index(y) for y in data.splits["train"].labels]
    return ClassificationObjective(feats, labels, tok.pad_token_id), [len(f["input_ids"]) for f in feats]


def fresh(tiny_bert):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)


def test_accumulated_loss_equals_full_batch(tiny_bert, sentiment_csv, tmp_path):
    objective, lengths = setup(tiny_bert, sentiment_csv)
    results, weights = [], []
    for accum in (1, 5):  # 5 micro-batches of uneven padding must give the full-batch loss and update
        model = fresh(tiny_bert)
        args = TrainArgs(max_steps=3, batch_size=10, grad_accum=accum, lr=1e-3, log_every=1, warmup_ratio=0)
        results.append(train(model, objective, lengths, args, tmp_path / f"a{accum}"))
        weights.append(model.classifier.weight.detach().clone())
    losses = [[e["loss"] for e in r.history if "loss" in e] for r in results]
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)


def fresh_lora(tiny_bert):
    from peft import LoraConfig, TaskType, get_peft_model

    model = fresh(tiny_bert)
    return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, init_lora_weights=False))


@pytest.mark.parametrize("make", [fresh, fresh_lora], ids=["full", "lora"])
def test_resume_continues_exactly(make, tiny_bert, sentiment_csv, tmp_path):
    objective, lengths = setup(tiny_bert, sentiment_csv)
    args = TrainArgs(max_steps=8, batch_size=8, lr=1e-3, log_every=1, save_every=4, keep_checkpoints=3)
    full = train(make(tiny_bert), objective, lengths, args, tmp_path / "full", resume_key={"k": 1})
    if make is fresh_lora:  # a LoRA checkpoint holds the trainable tensors only, not the frozen base
        saved = tmp_path / "full" / "checkpoints" / "step-0000004"
        assert (saved / "trainable.safetensors").exists() and not (saved / "model.safetensors").exists()
    # Simulate a run killed after its step-4 checkpoint: keep only that checkpoint.
    run = tmp_path / "killed"
    shutil.copytree(tmp_path / "full", run)
    shutil.rmtree(run / "checkpoints" / "step-0000008")
    resumed = train(make(tiny_bert), objective, lengths, args, run, resume=True, resume_key={"k": 1})
    tail = lambda r: [e["loss"] for e in r.history if "loss" in e and e["step"] > 4]  # noqa: E731
    assert len(tail(full)) == 4
    assert tail(resumed) == tail(full)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8  # the curve is whole again, without duplicated steps


def test_resume_refuses_other_config(tiny_bert, sentiment_csv, tmp_path):
    import pytest

    from danlu.errors import DanluError

    objective, lengths = setup(tiny_bert, sentiment_csv)
    args = TrainArgs(max_steps=2, batch_size=8, save_every=2)
    train(fresh(tiny_bert), objective, lengths, args, tmp_path / "r", resume_key={"lr": 1})
    with pytest.raises(DanluError, match="different configuration"):
        train(fresh(tiny_bert), objective, lengths, args, tmp_path / "r", resume=True, resume_key={"lr": 2})


def test_bf16_only_where_the_hardware_has_it(tiny_bert, sentiment_csv, tmp_path, capsys):
    """--bf16 autocasts where bfloat16 is native (AMX/AVX512-BF16 CPUs, recent GPUs); elsewhere torch would
    emulate it ~50x slower than float32, so the run falls back to float32 and says so."""
    from danlu import hardware

    objective, lengths = setup(tiny_bert, sentiment_csv)
    hardware._warn_once.cache_clear()
    result = train(fresh(tiny_bert), objective, lengths, TrainArgs(max_steps=1, batch_size=8, bf16=True),
                   tmp_path / "bf16")
    err = capsys.readouterr().err
    if hardware.bf16_is_fast():
        assert result.precision == "bf16" and "--bf16 ignored" not in err
    else:
        assert result.precision == "fp32"
        assert "--bf16 ignored" in err and "no native bfloat16" in err
    plain = train(fresh(tiny_bert), objective, lengths, TrainArgs(max_steps=1, batch_size=8), tmp_path / "fp32")
    assert plain.precision == "fp32"


def test_bf16_is_fast_reads_the_cpu_flags(monkeypatch):
    from danlu import hardware

    for amx, avx512_bf16, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        hardware.bf16_is_fast.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert hardware.bf16_is_fast("cpu") is expected
    hardware.bf16_is_fast.cache_clear()
