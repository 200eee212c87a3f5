"""`danlu serve` on a tiny random Llama, as a real subprocess, through the `openai` client and httpx."""

import concurrent.futures
import json
import random

import httpx
import openai
import pytest
import torch
from serving import metric, running_server

FLAGS = ["--served-model-name", "tiny", "--dtype", "float32", "--threads", "1", "--max-model-len", "256",
         "--max-tokens-limit", "100", "--max-body-bytes", "20000", "--max-batch-size", "6", "--prefill-chunk", "32"]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    with running_server(tiny_llama, *FLAGS, log_dir=tmp_path_factory.mktemp("logs")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def reference(tiny_llama):
    """`generate` alone on the device the server chose (--device auto: CUDA when present), in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))

    def generate(prompt_ids: list[int], n: int) -> list[int]:
        ids = torch.tensor([prompt_ids], device=device)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny model: one thread is fastest, above all on a busy machine
        try:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
        finally:
            torch.set_num_threads(threads)
        return out[0, len(prompt_ids):].tolist()

    generate.tokenizer = tokenizer
    return generate


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    models = httpx.get(server.url + "/v1/models").json()
    assert models["data"][0]["max_model_len"] == 256 and models["data"][0]["kind"] == "decoder"
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["waiting"] == 0
    client.completions.create(model="tiny", prompt="count", max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "danlu_requests_total", endpoint="/v1/completions", status="200") >= 1
    assert metric(text, "danlu_generation_tokens_total") >= 4
    assert metric(text, "danlu_prompt_tokens_total") >= 1
    for name in ("danlu_time_to_first_token_seconds", "danlu_time_per_output_token_seconds",
                 "danlu_e2e_request_latency_seconds"):
        assert metric(text, name + "_count") >= 1, name
    assert "danlu_queue_depth" in text and "danlu_running_batch_size" in text


def test_greedy_output_matches_generate_with_many_concurrent_mixed_requests(server, reference):
    rng = random.Random(1)
    vocab = len(reference.tokenizer)
    jobs = [([rng.randrange(vocab) for _ in range(rng.randint(1, 150))], rng.randint(1, 40), i % 3 == 0)
            for i in range(16)]

    def ask(job):
        prompt, n, stream = job
        body = {"model": "tiny", "prompt": prompt, "max_tokens": n, "temperature": 0, "return_token_ids": True}
        if not stream:
            return post(server, "/v1/completions", body).json()["choices"][0]["token_ids"]
        with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        return chunks[-1]["choices"][0]["token_ids"]

    def noise(i):  # sampled requests in the same batches
        return post(server, "/v1/completions", {"model": "tiny", "prompt": "noise " * i, "max_tokens": 20,
                                                "temperature": 1.0, "seed": i}).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        noisy = [pool.submit(noise, i) for i in range(1, 5)]
        answers = list(pool.map(ask, jobs))
        assert all(f.result() == 200 for f in noisy)
    for (prompt, n, _), got in zip(jobs, answers):
        assert got == reference(prompt, n)


def test_completion_usage_finish_reason_and_streaming(server, client, reference):
    tok = reference.tokenizer
    prompt = "The quick brown fox"
    full = client.completions.create(model="tiny", prompt=prompt, max_tokens=7, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length"
    prompt_tokens = len(tok(prompt)["input_ids"])
    assert (full.usage.prompt_tokens, full.usage.completion_tokens, full.usage.total_tokens) == \
        (prompt_tokens, 7, prompt_tokens + 7)
    expected = tok.decode(reference(tok(prompt)["input_ids"], 7), skip_special_tokens=True)
    assert full.choices[0].text == expected
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=7, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_uses_the_chat_template_streaming_and_not(server, client, reference):
    tok = reference.tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]
    ids = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
              add_special_tokens=False)["input_ids"]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == len(ids)
    generated = reference(ids, 6)
    assert reply.usage.completion_tokens == len(generated)
    assert reply.choices[0].message.content == tok.decode(generated, skip_special_tokens=True)
    assert reply.choices[0].finish_reason == ("stop" if generated[-1] == tok.eos_token_id else "length")
    stream = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                                 stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == reply.choices[0].message.content
    assert stream[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_stop_strings(server, client):
    base = client.completions.create(model="tiny", prompt="Once upon", max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    words = base.split()
    stop = words[len(words) // 2]
    expected = base[:base.find(stop)]
    got = client.completions.create(model="tiny", prompt="Once upon", max_tokens=30, temperature=0, stop=[stop, "zzzq"],
                                    extra_body={"ignore_eos": True})
    assert got.choices[0].text == expected and got.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=30, temperature=0,
                                              stop=stop, stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_n_choices_and_seeded_sampling_is_reproducible(server, client):
    def sample(seed):
        r = client.completions.create(model="tiny", prompt="Pick words:", max_tokens=12, temperature=1.0, top_p=0.9,
                                      n=3, seed=seed, extra_body={"ignore_eos": True, "top_k": 50})
        assert [c.index for c in r.choices] == [0, 1, 2] and r.usage.completion_tokens == 36
        return [c.text for c in r.choices]

    first = sample(7)
    assert sample(7) == first
    assert len(set(first)) == 3  # the n choices differ
    assert sample(8) != first


def test_logprobs_and_penalties(server, client):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and value <= 0
        assert value == pytest.approx(max(top.values()))  # greedy picks the most likely token
    assert "".join(lp.tokens) == r.choices[0].text and lp.text_offset[0] == 0
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                          temperature=0, logprobs=True, top_logprobs=2,
                                          extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)
    # a strong presence penalty forbids repeating any token; without it this random model repeats itself
    plain = post(server, "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 60, "temperature": 0,
                                             "ignore_eos": True, "return_token_ids": True}).json()
    penalised = post(server, "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 60, "temperature": 0,
                                                 "ignore_eos": True, "return_token_ids": True,
                                                 "presence_penalty": 2.0}).json()
    ids = penalised["choices"][0]["token_ids"]
    assert len(set(ids)) == len(ids) == 60
    assert len(set(plain["choices"][0]["token_ids"])) < 60


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client):
    def expect(response, status, words):
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert words in error["message"] and error["type"]
        ok = post(server, "/v1/completions", {"model": "tiny", "prompt": "still there?", "max_tokens": 2})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1

    url = server.url + "/v1/completions"
    expect(httpx.post(url, content=b'{"model": "tiny", "prompt": ', headers={"content-type": "application/json"}),
           400, "not valid JSON")
    expect(post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": "many"}), 400, "max_tokens")
    expect(post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "temperature": "hot"}), 400, "temperature")
    expect(post(server, "/v1/chat/completions", {"model": "tiny", "messages": "hello"}), 400, "messages")
    expect(post(server, "/v1/completions", {"model": "gpt-17", "prompt": "x"}), 404, "gpt-17")
    expect(post(server, "/v1/completions", {"model": "tiny", "prompt": [5] * 300}), 400, "--max-model-len")
    expect(post(server, "/v1/completions", {"model": "tiny", "prompt": [5, 10 ** 6]}), 400, "token ids")
    expect(post(server, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 101}), 400,
           "--max-tokens-limit")
    expect(post(server, "/v1/completions", {"model": "tiny", "prompt": "x" * 30000}), 413, "--max-body-bytes")
    expect(post(server, "/v1/embeddings", {"model": "tiny", "input": "x"}), 400, "decoder")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
