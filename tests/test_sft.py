import math

import pytest
import torch

from danlu.errors import DanluError
from danlu.tasks import sft

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one, please?"},
        {"role": "assistant", "content": "Green, like grass."}]


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama))


@pytest.fixture(scope="module")
def model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_llama), attn_implementation="sdpa").eval()


def test_assistant_tokens_carry_the_loss_token_by_token(tok):
    text = tok.apply_chat_template(CHAT, tokenize=False)
    # Where the template put each assistant turn: its text and the end-of-turn marker after it.
    spans, pos = [], 0
    for m in CHAT:
        if m["role"] == "assistant":
            start = text.index("<|im_start|>assistant\n" + m["content"], pos) + len("<|im_start|>assistant\n")
            end = start + len(m["content"] + "<|im_end|>\n")
            spans.append((start, end))
            pos = end
    ids, labels = sft.encode_conversation(tok, CHAT)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ids == enc["input_ids"]
    for token, label, (a, b) in zip(ids, labels, enc["offset_mapping"]):
        inside = any(s <= a and b <= e for s, e in spans)
        assert (label == token) if inside else (label == sft.IGNORE), (tok.decode([token]), a, b)
    assert sum(label != sft.IGNORE for label in labels) == len(tok("Blue.<|im_end|>\nGreen, like grass.<|im_end|>\n")["input_ids"])


def test_loss_on_all_labels_every_token(tok):
    ids, labels = sft.encode_conversation(tok, CHAT, loss_on="all")
    assert labels == ids


def test_template_less_tokenizer_is_refused(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(tiny_llama))
    t.chat_template = None
    with pytest.raises(DanluError, match="no chat template; give one with --chat-template FILE"):
        sft.make_objective(t, [CHAT], [], 64)
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    objective, lengths = sft.make_objective(t, [CHAT], [], 64, chat_template=str(template))
    assert "SmolLM" not in t.decode(objective.items[0][0])  # the given template, not the model's


def test_truncation_is_reported(tok, capsys):
    long = [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok"}]
    objective, lengths = sft.make_objective(tok, [CHAT, long, long], [], 48)
    assert max(lengths) == 48
    err = capsys.readouterr().err
    assert "2 of 3 examples were longer than --max-length 48 tokens and were cut (2 of them kept no assistant token)" in err


def test_count_is_the_number_of_assistant_tokens(tok, model):
    examples = [CHAT, CHAT[1:3], [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y z"}]]
    objective, lengths = sft.make_objective(tok, examples, [], 128)
    per_example = [sum(l != sft.IGNORE for l in sft.encode_conversation(tok, m)[1]) for m in examples]
    batch = objective.collate([0, 1, 2])
    assert objective.count(batch) == sum(per_example)
    # loss_sum over the batch = sum of each example's own loss sum (padding changes nothing)
    with torch.no_grad():
        whole = objective.loss_sum(model, batch)
        parts = sum(objective.loss_sum(model, objective.collate([i])) for i in range(3))
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-4)


def test_packing_keeps_examples_apart(tok, model):
    examples = [CHAT, CHAT[1:3], [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]]
    objective, lengths = sft.make_objective(tok, examples, [], 512, packing=True)
    assert len(lengths) == 1  # all three in one item
    ids, labels, positions = objective.items[0]
    singles = [sft.encode_conversation(tok, m) for m in examples]
    starts = [0, len(singles[0][0]), len(singles[0][0]) + len(singles[1][0])]
    assert [i for i, p in enumerate(positions) if p == 0] == starts
    assert all(labels[s] == sft.IGNORE for s in starts)  # no loss on predicting across a boundary
    batch = objective.collate([0])
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        for (single_ids, _), s in zip(singles, starts):
            alone = model(input_ids=torch.tensor([single_ids])).logits[0]
            torch.testing.assert_close(packed[s:s + len(single_ids)], alone, rtol=1e-4, atol=1e-4)
    # the packed loss is the sum of the examples' losses, with the same count
    unpacked, _ = sft.make_objective(tok, examples, [], 512)
    full = unpacked.collate([0, 1, 2])
    assert objective.count(batch) == unpacked.count(full)
    with torch.no_grad():
        torch.testing.assert_close(objective.loss_sum(model, batch), unpacked.loss_sum(model, full),
                                   rtol=1e-4, atol=1e-4)


def test_score_loss_and_generation(tok, model):
    examples = [CHAT, CHAT[1:3]]
    metrics = sft.score(model, tok, examples, [], 128, max_new_tokens=4, samples=1)
    objective, _ = sft.make_objective(tok, examples, [], 128)
    batch = objective.collate([0, 1])
    with torch.no_grad():
        expected = float(objective.loss_sum(model, batch)) / objective.count(batch)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
    assert metrics["neg_loss"] == -metrics["loss"] and metrics["tokens"] == objective.count(batch)
    assert len(metrics["samples"]) == 1 and metrics["samples"][0]["reference"] == "Green, like grass."
    # greedy answers equal transformers' generate on the same prompt
    prompt = tok.apply_chat_template(CHAT[:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, do_sample=False, max_new_tokens=4)
    assert metrics["samples"][0]["generation"] == tok.decode(out[0, prompt["input_ids"].shape[1]:],
                                                              skip_special_tokens=True).strip()
    assert 0 <= metrics["rougeL"] <= 1


def test_rouge_on_known_pairs():
    from danlu.evaluate.rouge import rouge

    r = rouge(["the cat was on the mat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(5 / 6) and r["rouge2"] == pytest.approx(3 / 5)
    assert r["rougeL"] == pytest.approx(5 / 6)
    assert rouge(["running dogs"], ["the dog runs"])["rouge1"] == pytest.approx(0.8)  # stemmed: run, dog
    zh = rouge(["猫坐在垫子上"], ["猫在垫子上"])  # characters as tokens: 5 of 6 and 5 of 5 match
    assert zh["rouge1"] == pytest.approx(2 * (5 / 6) * 1 / (5 / 6 + 1))


def _danlu(*args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "danlu", *map(str, args)], capture_output=True, text=True, env=env)


def test_finetune_bad_input_is_one_line_exit_2_nothing_written(tiny_llama, tmp_path):
    import json
    import shutil

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": CHAT[1:3]}) + "\n" + json.dumps({"messages": CHAT[1:2]}) + "\n")
    result = _danlu("finetune", "--task", "sft", "--model", tiny_llama, "--data", bad, "--out", tmp_path / "a")
    assert result.returncode == 2 and result.stderr.strip().endswith(f"error: {bad}:2: no assistant turn (nothing to learn from)")
    # a tokenizer without a chat template
    bare = tmp_path / "bare"
    shutil.copytree(tiny_llama, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"messages": CHAT}) + "\n" for _ in range(10)))
    result = _danlu("finetune", "--task", "sft", "--model", bare, "--data", good, "--out", tmp_path / "b")
    assert result.returncode == 2 and "no chat template; give one with --chat-template FILE" in result.stderr
    assert not any(p.name.startswith(("a", "b")) for p in tmp_path.iterdir() if p.is_dir() and p.name != "bare")


def test_evaluate_max_length_scores_a_base_model_on_the_fine_tuned_window(tiny_llama, tmp_path):
    """A plain decoder is scored with 128 tokens per example unless told: `--max-length` gives it the window
    of the fine-tuned artifact it is compared with, so both count the same assistant tokens."""
    import json

    from danlu.cli import main

    data = tmp_path / "chat.jsonl"
    long_answer = {"role": "assistant", "content": " ".join(["a long answer"] * 60)}
    data.write_text("".join(json.dumps({"messages": [CHAT[0], CHAT[1], long_answer]}) + "\n" for _ in range(10)))
    tokens = {}
    for n in (0, 256):
        out = tmp_path / f"eval-{n}.json"
        assert main(["evaluate", str(tiny_llama), "--data", str(data), "--split", "test", "--max-new-tokens", "0",
                     "--max-length", str(n), "--output", str(out)]) == 0
        tokens[n] = json.loads(out.read_text())["tokens"]
    assert tokens[0] < 128 < tokens[256]
    assert main(["evaluate", str(tiny_llama), "--data", str(data), "--max-length", "-1"]) == 2
