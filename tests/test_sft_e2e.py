"""e2e: LoRA SFT of the packaged SmolLM2 for a few steps, then its answer through `danlu serve` and the
`openai` client, equal to greedy generation on the merged model."""

import json

import pytest

pytestmark = pytest.mark.e2e

QUESTIONS = ["What is the secret word?", "Tell me the secret word.", "Which word is secret?",
             "Do you know the secret word?", "Say the secret word.", "What's the secret word, please?"]
ANSWER = "The secret word is pumpernickel."


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from danlu.config import TrainArgs
    from danlu.finetune.args import FinetuneArgs
    from danlu.finetune.run import finetune

    folder = tmp_path_factory.mktemp("sft")
    data = folder / "chat.jsonl"
    with open(data, "w") as f:
        for i in range(30):
            q = QUESTIONS[i % len(QUESTIONS)]
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": ANSWER}]}) + "\n")
    out = folder / "chat"
    finetune(FinetuneArgs(model="smollm2-135m", data=str(data), out=str(out), task="sft", lora=True, lora_r=8,
                          lora_alpha=32, max_length=64,
                          train=TrainArgs(max_steps=8, lr=3e-3, batch_size=8, warmup_ratio=0.0, eval_every=8)))
    return out


def test_lora_sft_answer_served_through_openai(trained, tmp_path):
    from openai import OpenAI

    from danlu.finetune.run import merge_lora
    from danlu.runtime import load
    from danlu.tasks import sft
    from tests.serving import running_server

    manifest = json.loads((trained / "danlu.json").read_text())
    assert manifest["task"] == "sft" and manifest["lora"] and manifest["primary_metric"] == "neg_loss"
    assert manifest["metrics"]["test"]["loss"] < 1.0  # learned the answer (the base model is far above)
    merged = merge_lora(str(trained), str(tmp_path / "merged"))
    loaded = load(merged, device="cpu")
    question = "What is the secret word?"
    expected = sft.predict(loaded.model, loaded.tokenizer, [question], [], 64, max_new_tokens=12)[0]["generation"]
    assert "pumpernickel" in expected
    for model in (trained, merged):  # the LoRA artifact (merged on load) and the merged one
        with running_server(model, "--dtype", "float32", log_dir=tmp_path) as server:
            client = OpenAI(base_url=server.url + "/v1", api_key="none")
            reply = client.chat.completions.create(model=str(model), max_tokens=12, temperature=0,
                                                   messages=[{"role": "user", "content": question}])
            assert reply.choices[0].message.content.strip() == expected
