"""`danlu serve` under pressure: API key, a full queue (429 + Retry-After), a client that leaves
mid-stream, and SIGTERM draining the requests in flight before exiting 0."""

import json
import signal
import threading
import time

import httpx
import openai
import pytest
from serving import metric, running_server

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def wait_for(server, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(server.url + "/health").json()
        if predicate(health):
            return health
        time.sleep(0.05)
    raise AssertionError(f"condition not reached; last /health: {health}")


def stream_lines(server, body):
    return httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, headers=AUTH,
                        timeout=60)


def test_key_queue_disconnect_and_drain(tiny_llama, tmp_path):
    flags = ["--served-model-name", "tiny", "--dtype", "float32", "--threads", "1", "--api-key", KEY,
             "--max-batch-size", "1", "--max-queue", "1", "--max-model-len", "512", "--max-tokens-limit", "500"]
    with running_server(tiny_llama, *flags, log_dir=tmp_path) as server:
        # 401 without the key or with a wrong one; /health stays open for probes, /metrics needs the key
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
        assert httpx.post(server.url + "/v1/completions", json=body).status_code == 401
        wrong = httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="nope").models.list()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
        assert client.completions.create(model="tiny", prompt="hi", max_tokens=2).usage.completion_tokens >= 1

        # one slot, one queue place: a long stream runs, a second request waits, a third gets 429
        long = {"model": "tiny", "prompt": "go", "max_tokens": 450, "temperature": 0, "ignore_eos": True}
        with stream_lines(server, long) as first:
            lines = first.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))
            waiting = {}
            t = threading.Thread(target=lambda: waiting.update(r=httpx.post(
                server.url + "/v1/completions", json={**body, "max_tokens": 3, "ignore_eos": True}, headers=AUTH,
                timeout=60)))
            t.start()
            wait_for(server, lambda h: h["waiting"] == 1)
            refused = httpx.post(server.url + "/v1/completions", json=body, headers=AUTH)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "queue_full"
            # the client of the long stream goes away mid-stream
        t.join(60)
        assert waiting["r"].status_code == 200 and waiting["r"].json()["usage"]["completion_tokens"] == 3
        wait_for(server, lambda h: h["running"] == 0 and h["waiting"] == 0)
        text = httpx.get(server.url + "/metrics", headers=AUTH).text
        assert metric(text, "danlu_requests_total", endpoint="/v1/completions", status="429") == 1
        assert metric(text, "danlu_requests_total", endpoint="/v1/completions", status="401") == 2
        # the abandoned stream stopped long before its 450 tokens (its slot went to the waiting request)
        assert metric(text, "danlu_generation_tokens_total") < 2 + 450 + 3

        # SIGTERM while a stream is in flight: the stream completes, then the process exits 0
        with stream_lines(server, {**long, "max_tokens": 120}) as last:
            lines = last.iter_lines()
            first_line = next(line for line in lines if line.startswith("data: {"))
            server.process.send_signal(signal.SIGTERM)
            rest = [first_line] + [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in rest[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert server.process.wait(timeout=60) == 0
        assert "drained and stopped" in server.output()
