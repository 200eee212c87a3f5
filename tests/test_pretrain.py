"""`danlu pretrain`: the objectives' batches, artifacts that finetune / from_pretrained take, exact
accumulation, --init, and clear errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from danlu.cli import main
from danlu.data.prepare import PrepareArgs, prepare
from danlu.pretrain.data import load_prepared
from danlu.pretrain.run import build_objective

ASSETS = Path(__file__).parent / "assets"
FAST = ["--seq-len", "32", "--batch-size", "8", "--log-every", "1", "--eval-every", "3", "--eval-sequences", "16"]


def test_mlm_masks_15_percent_80_10_10_deterministically(prepared):
    data = load_prepared(prepared)
    objective = build_objective("mlm", data, "train", 32, 0.15, seed=7)
    batch = objective.collate(list(range(len(objective))) * 20)  # the same windows many times over
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape[1] == 32 and (ids[:, 0] == 2).all() and (ids[:, -1] == 3).all()  # [CLS] ... [SEP]
    assert (labels[:, 0] == -100).all() and (labels[:, -1] == -100).all()  # specials are never targets
    predicted = labels != -100
    assert predicted.sum(1).float().mean().item() == pytest.approx(0.15 * 30, abs=0.6)
    targets, inputs = labels[predicted], ids[predicted]
    masked = (inputs == 4).float().mean().item()
    kept = (inputs == targets).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.03) and kept == pytest.approx(0.1, abs=0.03)
    again = objective.collate([0, 1])
    assert torch.equal(again["input_ids"], objective.collate([0, 1])["input_ids"])  # same epoch: same masks
    objective.set_epoch(1)
    assert not torch.equal(again["labels"], objective.collate([0, 1])["labels"])  # new epoch: new masks


def find(tokens: list[int], part: np.ndarray, start: int = 0) -> int:
    part = part.tolist()
    return next(i for i in range(start, len(tokens)) if tokens[i:i + len(part)] == part)


def test_nsp_pairs_are_half_true_next_half_random(prepared):
    data = load_prepared(prepared)
    objective = build_objective("mlm+nsp", data, "train", 32, 0.15, seed=3)
    chunks = objective.chunks
    tokens = np.asarray(chunks.shards[0].tokens, dtype=np.int64).tolist()
    labels, true_pairs = [], 0
    for index in range(len(chunks)):
        for epoch in range(10):
            rng = np.random.default_rng([3, epoch, index])
            a, b, is_random = chunks.pair(index, rng)
            labels.append(is_random)
            assert 0 < len(a) and len(a) + len(b) <= 29 and (len(a) + len(b) < 29 or abs(len(a) - len(b)) <= 1
                                                             or min(len(a), len(b)) >= 8)
            if not is_random:  # B follows A in the same document (BERT trims either end of the longer one)
                a_at = find(tokens, a, chunks.spans[index][0][0])
                b_at = find(tokens, b, a_at + len(a))
                assert 3 not in tokens[a_at:b_at + len(b)]  # no document boundary between them
                true_pairs += 1
    assert np.mean(labels) == pytest.approx(0.5, abs=0.1) and true_pairs > 0
    batch = objective.collate([0, 1, 2])
    first_sep = (batch["input_ids"][0] == 3).nonzero()[0].item()
    assert (batch["token_type_ids"][0, :first_sep + 1] == 0).all() and batch["token_type_ids"][0, first_sep + 1] == 1
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label"}


def test_bert_mlm_nsp_artifact_is_finetuned_directly(prepared, tmp_path, sentiment_csv):
    out = tmp_path / "bert"
    assert main(["pretrain", "--data", str(prepared), "--out", str(out), "--objective", "mlm+nsp",
                 "--max-steps", "6", "--lr", "2e-3", *FAST]) == 0
    manifest = json.loads((out / "danlu.json").read_text())
    assert manifest["task"] == "mlm" and manifest["objective"] == "mlm+nsp" and manifest["arch"] == "bert"
    stats = json.loads((prepared / "stats.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["unigram_entropy"] == stats["unigram_entropy"]
    assert set(metrics["validation"]) == {"loss", "perplexity", "nsp_loss", "nsp_accuracy"}
    assert metrics["validation"]["perplexity"] == pytest.approx(math.exp(metrics["validation"]["loss"]))
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in curve if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in curve if "eval_nsp_accuracy" in e] == [3, 6]
    assert curve[-1]["eval_loss"] < math.log(600)  # it learned something in 6 steps
    for name in ("config.json", "model.safetensors", "tokenizer.json", "report.md", "report.html", "curve.png"):
        assert (out / name).exists(), name
    assert "unigram baseline" in (out / "report.md").read_text()
    from transformers import AutoTokenizer, BertForPreTraining

    BertForPreTraining.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("a b")["input_ids"][0] == 2 and tokenizer("a b")["input_ids"][-1] == 3  # [CLS] ... [SEP]

    tuned = tmp_path / "clf"
    assert main(["finetune", "--model", str(out), "--data", str(sentiment_csv), "--out", str(tuned),
                 "--max-steps", "8", "--batch-size", "8", "--lr", "1e-3", "--max-length", "32"]) == 0
    result = json.loads((tuned / "danlu.json").read_text())
    assert result["parent"] == str(out) and 0 <= result["metrics"]["test"]["accuracy"] <= 1
    assert result["metrics"]["test"]["examples"] == 12


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_causal_lm_artifact_loads_and_generates(prepared, tmp_path, arch):
    out = tmp_path / arch
    assert main(["pretrain", "--data", str(prepared), "--out", str(out), "--objective", "clm", "--arch", arch,
                 "--max-steps", "4", *FAST]) == 0
    manifest = json.loads((out / "danlu.json").read_text())
    assert manifest["task"] == "causal-lm" and manifest["arch"] == arch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    prompt = tokenizer("The river", return_tensors="pt")
    assert prompt["input_ids"][0, -1] != tokenizer.eos_token_id  # a prompt must not end the text
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 5 or tokenizer.eos_token_id in generated[0]
    assert model.config.eos_token_id == json.loads((Path(manifest["data"]["source"]) / "meta.json").read_text())[
        "separator_id"]


def test_accumulation_and_clm_loss_is_exact(prepared, tmp_path):
    """Loss and weights with --grad-accum 4 equal those of the full batch (count = predicted tokens)."""
    from danlu.pretrain.args import PretrainArgs
    from danlu.pretrain.run import pretrain

    results = {}
    for accum in (1, 4):
        out = tmp_path / f"a{accum}"
        args = PretrainArgs(data=str(prepared), out=str(out), objective="mlm", seq_len=32)
        args.train.max_steps, args.train.batch_size, args.train.grad_accum = 3, 8, accum
        args.train.log_every, args.train.eval_every, args.train.lr = 1, 3, 1e-3
        pretrain(args)
        results[accum] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {k: [e["loss"] for e in v if "loss" in e] for k, v in results.items()}
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[4]), rtol=1e-5, atol=1e-6)


def test_init_continues_a_pretrained_model(prepared, tmp_path):
    first = tmp_path / "first"
    assert main(["pretrain", "--data", str(prepared), "--out", str(first), "--objective", "mlm",
                 "--max-steps", "3", *FAST]) == 0
    second = tmp_path / "second"
    assert main(["pretrain", "--data", str(prepared), "--out", str(second), "--objective", "mlm", "--init",
                 str(first), "--max-steps", "3", *FAST]) == 0
    before = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    after = [json.loads(x) for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert after[0]["loss"] < before[0]["loss"]  # it starts where the first run ended, not from scratch
    assert json.loads((second / "danlu.json").read_text())["parent"] == str(first)


def test_bad_input_is_a_clear_error(prepared, tmp_path, capsys):
    def error(*argv) -> str:
        assert main(["pretrain", "--data", str(prepared), "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "--objective mlm+nsp cannot train --arch llama: it needs --arch bert" in error(
        "--objective", "mlm+nsp", "--arch", "llama")
    assert "--objective mlm cannot train --arch gpt2" in error("--objective", "mlm", "--arch", "gpt2")
    assert "--objective clm cannot train --arch bert" in error("--objective", "clm", "--arch", "bert")
    assert "the training split is smaller than one sequence of --seq-len 4096" in error("--seq-len", "4096")
    assert "not a prepared corpus" in error("--data", str(tmp_path))
    config = tmp_path / "c.json"
    config.write_text("[1, 2]")
    assert "expected a JSON object" in error("--config", str(config))
    # --init with data tokenized by another vocabulary
    from danlu.assets import resolve_model

    assert "was tokenized with another vocabulary" in error("--init", str(resolve_model("minilm-l6")))


def test_resume_from_a_different_config_is_refused(prepared, tmp_path, monkeypatch, capsys):
    import danlu.pretrain.artifact as artifact

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash before the artifact is written")

    argv = ["pretrain", "--data", str(prepared), "--out", str(tmp_path / "r"), "--objective", "clm",
            "--max-steps", "2", "--save-every", "1", *FAST]
    monkeypatch.setattr(artifact, "write_artifact", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(argv)
    monkeypatch.undo()
    assert (tmp_path / "r.run" / "checkpoints" / "step-0000002" / "train_state.json").exists()
    assert main([*argv, "--resume", "--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "lr: checkpoint 0.0005 vs now 0.01" in err
    assert main([*argv, "--resume", "--objective", "mlm"]) == 2
    assert "objective: checkpoint 'clm' vs now 'mlm'" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # the same arguments resume (here: nothing left to train)
    assert (tmp_path / "r" / "model.safetensors").exists()


@pytest.mark.e2e
def test_continued_pretraining_of_smollm2(tmp_path, capsys):
    """Domain adaptation: the packaged SmolLM2-135M continues causal-LM training on text tokenized with
    its own tokenizer; MLM on that data is refused (the tokenizer has no mask token)."""
    data = tmp_path / "smol-data"
    prepare(PrepareArgs(corpus=[str(ASSETS / "en_sample.txt")], out=str(data), tokenizer="smollm2-135m",
                        seq_len=32, val_ratio=0.2))
    out = tmp_path / "smol"
    assert main(["pretrain", "--data", str(data), "--out", str(out), "--objective", "clm", "--init", "smollm2-135m",
                 "--seq-len", "32", "--batch-size", "2", "--max-steps", "1", "--eval-every", "1",
                 "--eval-sequences", "2", "--lr", "1e-5"]) == 0
    manifest = json.loads((out / "danlu.json").read_text())
    assert manifest["arch"] == "llama" and manifest["parent"].endswith("smollm2-135m")
    # A pretrained model starts far below the unigram baseline on ordinary English.
    assert manifest["metrics"]["validation"]["loss"] < manifest["metrics"]["unigram_entropy"]
    assert main(["pretrain", "--data", str(data), "--out", str(tmp_path / "x"), "--objective", "mlm"]) == 2
    assert "has no mask token" in capsys.readouterr().err
