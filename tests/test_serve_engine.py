"""The decoder engine in-process: greedy parity with `generate` under continuous batching, cancellation,
and the stop-string detokenizer."""

import copy
import random
import threading
import time

import pytest
import torch

from danlu.serve.engine import DecoderEngine, QueueFull, Sequence
from danlu.serve.kv_cache import SlotKVCache
from danlu.serve.sampling import SamplingParams
from danlu.serve.text import TextTracker


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a width-32 model gains nothing from more, and a busy machine hurts a lot
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    yield model, AutoTokenizer.from_pretrained(str(tiny_llama))
    torch.set_num_threads(threads)


def run_all(engine, seqs, timeout=120):
    done = threading.Semaphore(0)
    events = {}
    for seq in seqs:
        original = seq.emit

        def emit(event, seq=seq, original=original):
            events.setdefault(seq.id, []).append(event)
            original(event)
            if event.finish_reason:
                done.release()
        seq.emit = emit
    engine.submit(seqs)
    for _ in seqs:
        assert done.acquire(timeout=timeout)
    return events


def greedy_in_batches(model, tokenizer, *, count, longest, slots, seed, noise=0, lean_step=True):
    """`count` random prompts of 1..`longest` tokens, each decoded greedily for 1..25 new tokens by an engine of
    `slots` slots (so they queue, join and leave) with 16-token prefill chunks (so long prompts are prefilled
    over several steps while others decode), beside `noise` sampled sequences on the same prompts.
    Returns (prompts, the greedy sequences, their events)."""
    engine = DecoderEngine(model, tokenizer, max_batch_size=slots, max_queue=100, max_model_len=512,
                           prefill_chunk=16, lean_step=lean_step)
    engine.start()
    try:
        rng = random.Random(seed)
        prompts = [[rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, longest))] for _ in range(count)]
        seqs = [Sequence(p, SamplingParams(max_tokens=rng.randint(1, 25), temperature=0), lambda e: None, tokenizer)
                for p in prompts]
        sampled = [Sequence(prompts[i], SamplingParams(max_tokens=10, temperature=1.0, seed=i), lambda e: None,
                            tokenizer) for i in range(noise)]
        events = run_all(engine, seqs + sampled)
    finally:
        engine.stop()
    assert engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0
    return prompts, seqs, events


def generate_alone(model, prompt, new_tokens):
    return model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=new_tokens, do_sample=False)[0, len(prompt):].tolist()


def test_greedy_tokens_match_generate_alone_whatever_the_batch(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    # some sampled sequences in the same batches must not disturb the greedy ones
    prompts, seqs, events = greedy_in_batches(model, tokenizer, count=24, longest=120, slots=5, seed=0, noise=4)
    for prompt, seq in zip(prompts, seqs):
        reference = generate_alone(model, prompt, seq.params.max_tokens)
        assert seq.generated == reference
        last = events[seq.id][-1]
        assert last.completion_tokens == len(reference) and last.prompt_tokens == len(prompt)
        assert last.finish_reason == ("stop" if reference[-1] == tokenizer.eos_token_id else "length")


def test_transformers_forward_gives_the_same_tokens_and_other_models_say_why_they_use_it(model_and_tokenizer):
    """The lean Llama decode step is the default; transformers' forward (models it does not cover) decodes alike."""
    from danlu.serve.llama_step import unsupported

    model, tokenizer = model_and_tokenizer
    assert unsupported(model) is None
    prompts, seqs, _ = greedy_in_batches(model, tokenizer, count=8, longest=40, slots=3, seed=3, lean_step=False)
    for prompt, seq in zip(prompts, seqs):
        assert seq.generated == generate_alone(model, prompt, seq.params.max_tokens)
    model.config.hidden_act = "gelu"
    try:
        assert unsupported(model) == "activation 'gelu'"
    finally:
        model.config.hidden_act = "silu"
    assert unsupported(copy.deepcopy(model).to(torch.bfloat16)) == "dtype torch.bfloat16 (the lean step computes in float32)"


def test_cancel_frees_the_slot_and_full_queue_refuses(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = DecoderEngine(model, tokenizer, max_batch_size=1, max_queue=1, max_model_len=512, prefill_chunk=64)
    engine.start()
    try:
        got = threading.Event()
        long = Sequence([1, 2, 3], SamplingParams(max_tokens=400, temperature=0, ignore_eos=True),
                        lambda e: got.set(), tokenizer)
        engine.submit([long])
        assert got.wait(30)
        waiting = Sequence([4, 5], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True), lambda e: None,
                           tokenizer)
        engine.submit([waiting])
        with pytest.raises(QueueFull):
            engine.submit([Sequence([6], SamplingParams(), lambda e: None, tokenizer)])
        engine.cancel(long)
        for _ in range(300):  # the cancel takes effect at the next step; then `waiting` gets the slot
            if engine.stats()["waiting"] == 0:
                break
            time.sleep(0.1)
        events = run_all(engine, [Sequence([7, 8], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True),
                                           lambda e: None, tokenizer)])
        assert list(events.values())[0][-1].completion_tokens == 2
        assert len(long.generated) < 400 and long.finished and waiting.finished
    finally:
        engine.stop()


class _CharTokenizer:
    """One character per token id (ord), so stop-string cases are easy to write."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def feed(text: str, stop: list[str]) -> tuple[list[str], TextTracker]:
    tracker = TextTracker(_CharTokenizer(), stop)
    out = []
    for ch in text:
        out.append(tracker.add(ord(ch)))
        if tracker.stopped:
            break
    out.append(tracker.flush())
    return out, tracker


def test_stop_strings_cut_the_text_and_prefixes_are_held_back():
    out, tracker = feed("hello world. bye", ["world"])
    assert "".join(out) == "hello " and tracker.stopped
    assert "w" not in "".join(out[:7])  # "w", "wo", ... were held back until they could not be the stop
    out, tracker = feed("a wobbly wonder", ["world"])
    assert "".join(out) == "a wobbly wonder" and not tracker.stopped
    out, _ = feed("x END y", ["END", " y"])
    assert "".join(out) == "x "


def test_idle_cache_release_gives_gpu_memory_back(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    SlotKVCache(2, 4, 2, 8, 64, torch.float32, torch.device("cpu")).release()
    assert emptied == []
    SlotKVCache(2, 4, 2, 8, 64, torch.bfloat16, torch.device("cuda")).release()  # nothing allocated yet
    assert emptied == [True]


def test_cache_growth_that_failed_half_way_can_be_retried(monkeypatch):
    cache = SlotKVCache(3, 2, 1, 4, 1024, torch.float32, torch.device("cpu"), block=16)
    cache.ensure_capacity(10)
    cache.keys[2][1, 0, 9] = 7.0
    zeros, calls = torch.zeros, []

    def out_of_memory_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("out of memory")
        return zeros(*args, **kwargs)

    monkeypatch.setattr(torch, "zeros", out_of_memory_on_the_third)
    with pytest.raises(torch.OutOfMemoryError):
        cache.ensure_capacity(40)  # keys of layers 0 and 1 grew, layer 2 did not
    monkeypatch.setattr(torch, "zeros", zeros)
    cache.ensure_capacity(40)
    assert cache.capacity == 48 and all(k.shape[2] == 48 for k in cache.keys + cache.values)
    assert cache.keys[2][1, 0, 9].tolist() == [7.0] * 4  # (slot, kv_head, position) -> head_dim values
