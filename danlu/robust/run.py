"""`danlu attack`: attack the first N examples of a split, write attack.json and attack.html."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from danlu.artifact import atomic_dir
from danlu.robust.args import AttackArgs
from danlu.data.words import stop_words
from danlu.robust.recipes import Constraints, Substitutes, check_recipe
from danlu.robust.search import AttackResult, Words, greedy_attack, run_attacks


def black_box(model, tokenizer, max_length: int, batch_size: int):
    """texts -> class probabilities (n, labels), in length-sorted batches; works for ONNX models too."""
    from danlu.tasks.classify import encode, predict_proba

    def predict(texts: list[str]) -> np.ndarray:
        return predict_proba(model, tokenizer, encode(tokenizer, texts, max_length), batch_size).numpy()

    return predict


def attack_texts(predict, texts: list[str], labels: list[str], label_names: list[str], recipe: str,
                 constraints: Constraints, unk: str = "[UNK]", seed: int = 0) -> list[AttackResult]:
    """Attack each (text, label) against the black box `predict`; plain values in, results out."""
    check_recipe(recipe)
    substitutes = Substitutes(recipe, constraints, seed)
    stops = stop_words()
    substitutes.prepare([w for t in texts for w in Words(t).words])
    searches = [greedy_attack(t, label_names.index(y), label_names, recipe, substitutes, constraints, stops, unk)
                for t, y in zip(texts, labels)]
    return run_attacks(searches, predict)


def summarize(results: list[AttackResult], seconds: float) -> dict:
    """Clean accuracy, accuracy under attack, success rate, words changed, queries, examples/s."""
    n = len(results)
    attacked = [r for r in results if r.status != "skipped"]
    success = [r for r in attacked if r.status == "success"]
    return {
        "examples": n, "attacked": len(attacked), "successful": len(success),
        "clean_accuracy": len(attacked) / n, "accuracy_under_attack": (len(attacked) - len(success)) / n,
        "attack_success_rate": len(success) / len(attacked) if attacked else 0.0,
        "mean_fraction_words_changed": float(np.mean([r.fraction_changed for r in success])) if success else 0.0,
        "queries_per_example": float(np.mean([r.queries for r in attacked])) if attacked else 0.0,
        "seconds": round(seconds, 3), "examples_per_second": n / seconds if seconds > 0 else 0.0,
    }


def attack(args: AttackArgs) -> dict:
    """Run the attack and write ARGS.out/attack.json and attack.html; return the summary."""
    from danlu.explain.loading import load, split_examples

    check_recipe(args.recipe)
    loaded = load(args.artifact, args.device or None)
    texts, labels = split_examples(loaded, args.data, args.split, args.n)
    constraints = Constraints(True, args.max_words_changed, args.min_cosine, args.candidates)
    predict = black_box(loaded.model, loaded.tokenizer, loaded.max_length, args.batch_size)
    unk = loaded.tokenizer.unk_token or "[UNK]"
    start = time.perf_counter()
    results = attack_texts(predict, texts, labels, loaded.labels, args.recipe, constraints, unk, args.seed)
    summary = summarize(results, time.perf_counter() - start)
    report = {"artifact": str(loaded.path), "data": args.data, "split": args.split, "recipe": args.recipe,
              "constraints": constraints.describe(args.recipe), "metrics": summary,
              "load_average": os.getloadavg(), "results": [r.__dict__ for r in results]}
    out = Path(args.out)
    from danlu.robust.report import attack_page

    with atomic_dir(out) as tmp:
        (tmp / "attack.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        (tmp / "attack.html").write_text(attack_page(report), encoding="utf-8")
    m = summary
    print(f"{args.recipe}: clean accuracy {m['clean_accuracy']:.3f}, under attack {m['accuracy_under_attack']:.3f}, "
          f"success rate {m['attack_success_rate']:.3f}, words changed {m['mean_fraction_words_changed']:.3f}, "
          f"queries/example {m['queries_per_example']:.1f}, {m['examples_per_second']:.2f} examples/s")
    print(f"wrote {out / 'attack.json'} and {out / 'attack.html'}")
    return summary
