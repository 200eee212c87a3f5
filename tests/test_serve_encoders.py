"""`danlu serve` for encoders: /v1/classify on a fine-tuned classifier, /v1/embeddings on MiniLM."""

import concurrent.futures
import math
import subprocess
import sys

import httpx
import openai
import pytest
from serving import metric, running_server


@pytest.fixture(scope="module")
def classifier(tiny_bert, sentiment_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-clf") / "clf"
    r = subprocess.run([sys.executable, "-m", "danlu", "finetune", "--model", str(tiny_bert), "--data",
                        str(sentiment_csv), "--out", str(out), "--epochs", "4", "--lr", "3e-3", "--batch-size", "16"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_classify_batches_inputs_and_matches_predict(classifier, tmp_path):
    texts = ["the film was great and wonderful", "the film was awful and boring", "lovely and superb",
             "dreadful, terrible"]
    from danlu.runtime import load as load_classifier
    from danlu.tasks.classify import encode, predict_proba

    clf = load_classifier(str(classifier), device="cpu")
    probs = predict_proba(clf.model, clf.tokenizer, encode(clf.tokenizer, texts, clf.max_length)).tolist()
    expected = [{"label": clf.labels[max(range(2), key=p.__getitem__)], "probabilities": dict(zip(clf.labels, p))}
                for p in probs]
    with running_server(classifier, "--threads", "1", "--batch-wait-ms", "20", "--max-batch-size", "8",
                        log_dir=tmp_path) as server:
        name = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
        assert name == "clf"
        r = httpx.post(server.url + "/v1/classify", json={"model": name, "input": texts}, timeout=60).json()
        assert [row["label"] for row in r["data"]] == [e["label"] for e in expected] == ["pos", "neg", "pos", "neg"]
        for row, e in zip(r["data"], expected):
            assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
            assert row["probabilities"]["pos"] == pytest.approx(e["probabilities"]["pos"], abs=1e-4)
        assert r["usage"]["prompt_tokens"] > len(texts)

        def one(text):  # concurrent single-text requests are micro-batched; answers must not change
            return httpx.post(server.url + "/v1/classify", json={"model": name, "input": text}, timeout=60).json()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            singles = list(pool.map(one, texts * 2))
        assert [s["data"][0]["label"] for s in singles] == [e["label"] for e in expected] * 2
        bad = httpx.post(server.url + "/v1/classify", json={"model": name, "input": 42})
        assert bad.status_code == 400 and "input" in bad.json()["error"]["message"]
        wrong = httpx.post(server.url + "/v1/completions", json={"model": name, "prompt": "x"})
        assert wrong.status_code == 400 and "classifier" in wrong.json()["error"]["message"]
        text = httpx.get(server.url + "/metrics").text
        assert metric(text, "danlu_requests_total", endpoint="/v1/classify", status="200") == 9
        assert metric(text, "danlu_e2e_request_latency_seconds_count") == 9


@pytest.mark.e2e
def test_minilm_embeddings_are_normalised_and_similar_texts_are_closer(tmp_path):
    with running_server("minilm-l6", "--batch-wait-ms", "10", log_dir=tmp_path) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
        r = client.embeddings.create(model="minilm-l6", input=texts)
        vectors = [d.embedding for d in r.data]
        assert [d.index for d in r.data] == [0, 1, 2] and len(vectors[0]) == 384
        for v in vectors:
            assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0, abs=1e-5)

        def cos(a, b):
            return sum(x * y for x, y in zip(a, b))

        assert cos(vectors[0], vectors[1]) > 0.6 > cos(vectors[0], vectors[2]) + 0.3
        assert r.usage.prompt_tokens > 10
        one = client.embeddings.create(model="minilm-l6", input=texts[0]).data[0].embedding
        assert cos(one, vectors[0]) == pytest.approx(1.0, abs=1e-4)  # alone or batched with others, same vector
        b64 = httpx.post(server.url + "/v1/embeddings", json={"model": "minilm-l6", "input": "x",
                                                              "encoding_format": "base64"}).json()
        assert isinstance(b64["data"][0]["embedding"], str)
