import json
import subprocess
import sys

import pytest

from danlu.cli import main

DANLU = [sys.executable, "-m", "danlu"]


def run(*args):
    return subprocess.run([*DANLU, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def artifact(tiny_bert, sentiment_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "clf"
    r = run("finetune", "--model", tiny_bert, "--data", sentiment_csv, "--out", out, "--epochs", 4,
            "--lr", "3e-3", "--batch-size", 16, "--eval-every", 6, "--log-every", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_artifact_describes_itself(artifact):
    for name in ["config.json", "model.safetensors", "tokenizer.json", "danlu.json", "metrics.jsonl",
                 "report.md", "report.html", "curve.png"]:
        assert (artifact / name).exists(), name
    manifest = json.loads((artifact / "danlu.json").read_text())
    assert manifest["task"] == "classify" and manifest["labels"] == ["neg", "pos"]
    assert manifest["args"]["lr"] == 0.003 and len(manifest["data_fingerprint"]) == 64
    assert manifest["data"]["split"]["sizes"] == {"train": 96, "validation": 12, "test": 12}
    assert manifest["metrics"]["test"]["accuracy"] >= 0.9  # the words give the label away
    config = json.loads((artifact / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    curve = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in e for e in curve) and curve[0]["step"] == 1
    assert "accuracy **" in (artifact / "report.md").read_text()
    assert not artifact.with_name("clf.run").exists()


def test_predict_and_evaluate(artifact, sentiment_csv, tmp_path):
    r = run("predict", artifact, "the film was great and wonderful", "the film was awful and boring", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["label"] for row in rows] == ["pos", "neg"]
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-3
    r = run("evaluate", artifact, "--data", sentiment_csv, "--json")
    metrics = json.loads(r.stdout)
    saved = json.loads((artifact / "danlu.json").read_text())["metrics"]["test"]
    assert metrics["examples"] == 12 and metrics["accuracy"] == pytest.approx(saved["accuracy"])
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 12
    assert json.loads((artifact / "eval-test.json").read_text())["accuracy"] == metrics["accuracy"]


def test_lora_then_merge(tiny_bert, sentiment_csv, tmp_path):
    out = tmp_path / "lora"
    r = run("finetune", "--model", tiny_bert, "--data", sentiment_csv, "--out", out, "--max-steps", 4,
            "--lora", "--lora-r", 4, "--batch-size", 16)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "adapter_model.safetensors").exists() and json.loads((out / "danlu.json").read_text())["lora"]
    merged = tmp_path / "merged"
    assert run("merge", out, "--out", merged).returncode == 0
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    a = json.loads(run("predict", out, "a great film", "--json").stdout)
    b = json.loads(run("predict", merged, "a great film", "--json").stdout)
    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-3)


@pytest.mark.parametrize("argv, message", [
    (["--data", "nope.csv"], "no such file or packaged data set: 'nope.csv'"),
    (["--model", "minilm"], "unknown model 'minilm'"),
    (["--text-column", "body"], "no column 'body' (set --text-column); columns: text, label"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tiny_bert, sentiment_csv, tmp_path, capsys):
    base = {"--model": str(tiny_bert), "--data": str(sentiment_csv), "--out": str(tmp_path / "o")}
    args = ["finetune"]
    for k, v in base.items():
        if k not in argv:
            args += [k, v]
    assert main(args + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_pickled_weights_are_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    assert main(["predict", str(tmp_path), "hi"]) == 2
    assert "loads only safetensors" in capsys.readouterr().err


def test_lora_best_keeps_only_the_trainable_tensors_and_restores_them(tiny_bert, tmp_path):
    """LoRA runs kept the whole model in best/ at each improvement (540 MB for SmolLM2); now only the
    trainable tensors (adapters, head) are written, and loading them back restores the best model exactly."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from danlu.errors import DanluError
    from danlu.train.checkpoint import load_weights, save_weights

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2),
                           LoraConfig(task_type=TaskType.SEQ_CLS, r=4))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    save_weights(model, tmp_path / "best")
    assert not (tmp_path / "best" / "model.safetensors").exists()
    from safetensors.torch import load_file

    kept = load_file(str(tmp_path / "best" / "trainable.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(kept) == trainable and len(kept) < len(best)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.zero_()
    assert load_weights(model, tmp_path / "best")
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())
    for p in model.parameters():  # weights of another model (a frozen head) are refused, not half loaded
        if p.requires_grad and p.ndim == 1:
            p.requires_grad_(False)
            break
    with pytest.raises(DanluError, match="do not fit the model"):
        load_weights(model, tmp_path / "best")
    assert not load_weights(model, tmp_path / "nothing")
