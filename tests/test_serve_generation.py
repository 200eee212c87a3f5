"""Requests -> engine sequences: prompts the model cannot embed are refused before they reach the engine."""

import types

import pytest
import torch

from danlu.serve.generation import ApiError, Generator
from danlu.serve.schemas import CompletionRequest


def test_prompt_ids_past_the_models_embeddings_are_refused(tiny_llama):
    from transformers import AutoTokenizer

    # a tokenizer that knows more tokens than its model has embeddings for (added tokens, no resize): such an id
    # would fail the whole engine step, and on CUDA leave the process's CUDA context unusable
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    model = types.SimpleNamespace(get_input_embeddings=lambda: torch.nn.Embedding(1000, 2))
    engine = types.SimpleNamespace(model=model, check_fits=lambda count: None)
    generator = Generator(engine, tokenizer, "m", max_model_len=64, max_tokens_limit=16)

    def prompts(prompt):
        return generator.completion_prompts(CompletionRequest(model="m", prompt=prompt))

    assert generator.check_lengths(prompts([0, 999]), 4, None) == 4
    text = "Zebras play the xylophone."
    assert max(tokenizer(text)["input_ids"]) >= 1000
    for prompt in ([1000], [5, len(tokenizer)], [-1], text):
        with pytest.raises(ApiError, match=r"token ids must be in \[0, 1000\)") as refused:
            generator.check_lengths(prompts(prompt), 4, None)
        assert refused.value.status == 400
