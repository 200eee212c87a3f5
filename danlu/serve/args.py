"""Arguments of `danlu serve`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from danlu.config import arg, check


@dataclass
class ServeArgs:
    """Serve a model over an OpenAI-compatible HTTP API (continuous batching for decoders)."""

    model: str = arg(help="packaged model name (smollm2-135m, minilm-l6), danlu artifact or local HF model folder",
                     positional=True)
    host: str = arg("127.0.0.1", "address to listen on (0.0.0.0 exposes the server to the network)")
    port: int = arg(8000, "TCP port to listen on")
    api_key: str = arg("", "require `Authorization: Bearer KEY` on every /v1 request and on /metrics (visible in "
                           "`ps`: prefer --api-key-file or the DANLU_API_KEY environment variable); empty means no key")
    api_key_file: str = arg("", "read the API key from this file (its first line)")
    served_model_name: str = arg("", "the model id clients send and /v1/models lists; empty means the folder name")
    max_batch_size: int = arg(64, "sequences decoded together at most (KV-cache slots); encoders: inputs per batch")
    max_queue: int = arg(256, "sequences waiting for a slot at most; beyond it requests get 429 with Retry-After")
    max_model_len: int = arg(0, "prompt + generated tokens per sequence at most; 0 means min(model limit, 2048)")
    max_tokens_limit: int = arg(2048, "largest max_tokens a request may ask for")
    max_body_bytes: int = arg(1_000_000, "largest request body; larger ones get 413")
    prefill_chunk: int = arg(256, "prompt tokens prefilled per engine step at most, so long prompts never stall "
                                  "the sequences already decoding")
    batch_wait_ms: float = arg(5.0, "encoders: how long the first input of a micro-batch waits for company")
    dtype: Literal["auto", "float32", "bfloat16"] = arg(
        "auto", "weights and KV cache; auto = bfloat16 on CUDA with bf16 and on CPUs with AMX, else float32")
    quantize: Literal["none", "int8"] = arg(
        "none", "decoders on CPU: int8 = weight-only int8 (a byte per weight, a scale per output row) for every "
                "Linear and the output head, run by danlu's AVX2 kernel: SmolLM2-135M decodes 1.5-2x faster "
                "here, perplexity within 0.3 percent of float32; none = weights as --dtype")
    device: str = arg("auto", "cpu, cuda, cuda:N; auto = cuda when present")
    threads: int = arg(0, "CPU threads for torch; 0 = one per CPU that other processes leave free (affinity "
                          "mask, cgroup quota and current load decide)")

    def __post_init__(self) -> None:
        check(1 <= self.port <= 65535, "--port", f"must be in [1, 65535], got {self.port}")
        check(self.max_batch_size >= 1, "--max-batch-size", f"must be >= 1, got {self.max_batch_size}")
        check(self.max_queue >= 0, "--max-queue", f"must be >= 0, got {self.max_queue}")
        check(self.max_model_len >= 0, "--max-model-len", f"must be >= 0, got {self.max_model_len}")
        check(self.max_tokens_limit >= 1, "--max-tokens-limit", f"must be >= 1, got {self.max_tokens_limit}")
        check(self.max_body_bytes >= 1024, "--max-body-bytes", f"must be >= 1024, got {self.max_body_bytes}")
        check(self.prefill_chunk >= 16, "--prefill-chunk", f"must be >= 16, got {self.prefill_chunk}")
        check(self.batch_wait_ms >= 0, "--batch-wait-ms", f"must be >= 0, got {self.batch_wait_ms}")
        check(self.threads >= 0, "--threads", f"must be >= 0, got {self.threads}")
        check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "--device",
              f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
