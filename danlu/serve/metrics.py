"""Prometheus metrics of the server (text format at GET /metrics), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class Metrics:
    """Counters, gauges and histograms the engine and the HTTP layer update."""

    def __init__(self, model: str):
        self.registry = CollectorRegistry()
        r, labels = self.registry, {"model": model}
        self.requests = Counter("danlu_requests", "HTTP requests by endpoint and status code",
                                ["model", "endpoint", "status"], registry=r)
        self.queue_depth = Gauge("danlu_queue_depth", "sequences waiting for a KV-cache slot",
                                 ["model"], registry=r).labels(**labels)
        self.running = Gauge("danlu_running_batch_size", "sequences in the running batch (prefill + decode)",
                             ["model"], registry=r).labels(**labels)
        self.prompt_tokens = Counter("danlu_prompt_tokens", "prompt tokens processed", ["model"],
                                     registry=r).labels(**labels)
        self.generated_tokens = Counter("danlu_generation_tokens", "tokens generated", ["model"],
                                        registry=r).labels(**labels)
        self.ttft = Histogram("danlu_time_to_first_token_seconds", "arrival to first generated token",
                              ["model"], buckets=_LATENCY, registry=r).labels(**labels)
        self.tpot = Histogram("danlu_time_per_output_token_seconds", "mean time between generated tokens "
                              "of a request", ["model"], buckets=_PER_TOKEN, registry=r).labels(**labels)
        self.e2e = Histogram("danlu_e2e_request_latency_seconds", "arrival to last token (decoders) or "
                             "to the answer (encoders)", ["model"], buckets=_LATENCY, registry=r).labels(**labels)
        self.model = model

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(self.model, endpoint, str(status)).inc()

    def set_load(self, waiting: int, running: int) -> None:
        self.queue_depth.set(waiting)
        self.running.set(running)

    def first_token(self, seconds: float, prompt_tokens: int) -> None:
        self.ttft.observe(seconds)
        self.prompt_tokens.inc(prompt_tokens)

    def finished(self, seq, now: float) -> None:
        """A decoder sequence ended (engine thread)."""
        n = len(seq.generated)
        self.generated_tokens.inc(n)
        self.e2e.observe(now - seq.arrival)
        if n > 1 and seq.first_token_at is not None:
            self.tpot.observe((now - seq.first_token_at) / (n - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
