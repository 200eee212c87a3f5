"""Integrated gradients, 50 steps, on a fine-tuned MiniLM at 128 tokens: danlu explain's IG vs Captum
called the plain way (one `LayerIntegratedGradients.attribute` call on the same embedding layer, same
baseline and target, default internal batch size: all steps in one batch). Interleaved rounds on the same
texts; seconds per example (median), ratio; writes benchmarks/results/explain_speed.json.

    python benchmarks/explain_speed.py --model /work/runs/rt-minilm --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from danlu.explain.attribution import baseline_ids, encode_one, integrated_gradients
from danlu.explain.loading import load
from finetune_vs_hf import cpu_model  # benchmarks/ is on sys.path when run as a script

TEXT = ("the film is a wonderful and moving meditation on loss , though it drags in places and the ending "
        "never quite earns its tears ; still , the cast is superb")


def captum_plain(model, tokenizer, batch, target: int, steps: int):
    from captum.attr import LayerIntegratedGradients

    names = [k for k in ("attention_mask", "token_type_ids") if k in batch]

    def forward(input_ids, *extra):
        return torch.softmax(model(input_ids=input_ids, **dict(zip(names, extra))).logits, dim=-1)

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    attributions, delta = lig.attribute(batch["input_ids"], baselines=baseline_ids(tokenizer, batch["input_ids"]),
                                        additional_forward_args=tuple(batch[k] for k in names), target=target,
                                        n_steps=steps, return_convergence_delta=True)
    return attributions.sum(-1)[0], float(delta.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/work/runs/rt-minilm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "explain_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load(args.model, "cpu")
    model, tok = loaded.model, loaded.tokenizer
    text = " ".join([TEXT] * 8)
    batch = encode_one(tok, text, args.tokens)
    assert batch["input_ids"].shape[1] == args.tokens
    with torch.no_grad():
        target = int(model(**batch).logits.argmax())
    runs = {
        "captum_plain": lambda: captum_plain(model, tok, batch, target, args.steps),
        "danlu_fp32": lambda: integrated_gradients(model, tok, batch, target, args.steps)[:2],
        "danlu_bf16": lambda: integrated_gradients(model, tok, batch, target, args.steps, bf16=True)[:2],
    }
    times = {name: [] for name in runs}
    deltas = {}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        names = list(runs) if r % 2 == 0 else list(reversed(runs))  # interleaved, order alternating
        for name in names:
            start = time.perf_counter()
            _, delta = runs[name]()
            times[name].append(time.perf_counter() - start)
            deltas[name] = delta
            print(f"round {r + 1} {name}: {times[name][-1]:.2f} s, delta {delta:.3g}", flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": f"IG {args.steps} steps, {args.tokens} tokens, {args.model}, {args.threads} threads",
        "seconds_per_example": median, "all_seconds": times, "convergence_delta": deltas,
        "speedup_vs_captum_plain": {k: median["captum_plain"] / v for k, v in median.items()},
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "cpu": cpu_model(),
        "torch": torch.__version__, "target_met": {"<=2 s": median["danlu_fp32"] <= 2.0,
                                                   ">=2x": median["captum_plain"] / median["danlu_fp32"] >= 2.0},
    }
    from danlu.explain.attribution import choose_internal_batch_size

    result["internal_batch_size"] = choose_internal_batch_size(model.config, args.tokens, args.steps,
                                                               torch.device("cpu"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds_per_example", "speedup_vs_captum_plain", "load_average_before")}))


if __name__ == "__main__":
    main()
