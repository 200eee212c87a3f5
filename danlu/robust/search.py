"""Greedy search over a word-importance ranking, written as one generator per example that yields the
texts it needs scored; `run_attacks` drives all examples in lockstep so that every model query, whichever
example asked for it, goes into the same length-sorted batches (the black-box model is the cost)."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np

from danlu.robust.recipes import Constraints, Substitutes, split_words

Search = Generator[list[str], np.ndarray, "AttackResult"]


@dataclass
class AttackResult:
    """One example's attack: `status` is success, failed, or skipped (the model was already wrong)."""

    text: str
    label: str
    prediction: str
    status: str
    adversarial: str = ""
    adversarial_prediction: str = ""
    words: int = 0
    changes: list[dict] = field(default_factory=list)  # {"index", "from", "to"} per changed word
    queries: int = 0
    original_pieces: list = field(default_factory=list)  # [text, changed?] to mark the changes
    adversarial_pieces: list = field(default_factory=list)

    @property
    def fraction_changed(self) -> float:
        return len(self.changes) / self.words if self.words else 0.0


class Words:
    """A text as words and the gaps between them, so that one word can be swapped and the text rebuilt."""

    def __init__(self, text: str):
        spans = split_words(text)
        self.words = [text[s:e] for s, e in spans]
        starts = [0] + [e for _, e in spans]
        self.gaps = [text[a:s] for a, (s, _) in zip(starts, spans)]
        self.tail = text[starts[-1]:]

    def render(self, words: list[str]) -> str:
        return "".join(g + w for g, w in zip(self.gaps, words)) + self.tail

    def pieces(self, words: list[str], changed: set[int]) -> list:
        out = [[g, False] for g in self.gaps]
        return [p for i, w in enumerate(words) for p in (out[i], [w, i in changed])] + [[self.tail, False]]


def greedy_attack(text: str, label: int, labels: list[str], recipe: str, substitutes: Substitutes,
                  constraints: Constraints, stops: frozenset[str], unk: str) -> Search:
    """Attack one text; yields lists of texts and receives their class probabilities (n, labels)."""
    w = Words(text)
    words = w.words
    p0 = (yield [text])[0]
    result = AttackResult(text, labels[label], labels[int(p0.argmax())], "skipped", words=len(words))
    if int(p0.argmax()) != label:
        return result
    positions = [i for i, word in enumerate(words)
                 if not (constraints.keep_stop_words and word.lower() in stops)]
    blank = "" if recipe == "textfooler" else unk  # TextFooler ranks by deletion, the others by [UNK]
    probs = (yield [w.render(words[:i] + [blank] + words[i + 1:]) for i in positions]) if positions else None
    drops = (p0[label] - probs[:, label]) if positions else np.zeros(0)
    candidates = {i: substitutes(words[i]) for i in positions}
    if recipe == "pwws":  # probability-weighted word saliency: needs every swap of the original text scored
        swaps = [(i, c) for i in positions for c in candidates[i]]
        best = np.zeros(len(positions))
        if swaps:
            p = yield [w.render(words[:i] + [c] + words[i + 1:]) for i, c in swaps]
            where = {i: k for k, i in enumerate(positions)}
            for (i, _), q in zip(swaps, p[:, label]):
                best[where[i]] = max(best[where[i]], p0[label] - q)
        saliency = np.exp(drops - drops.max()) if len(drops) else drops
        scores = saliency / saliency.sum() * best if len(drops) else drops
    else:
        scores = drops
    order = [positions[k] for k in np.argsort(-scores, kind="stable")]
    budget = math.ceil(constraints.max_words_changed * len(words))  # as TextAttack's MaxWordsPerturbed
    current, current_p, changed = list(words), p0[label], set()
    for i in order:
        if len(changed) >= budget:
            break
        if not candidates[i]:
            continue
        texts = [w.render(current[:i] + [c] + current[i + 1:]) for c in candidates[i]]
        p = yield texts
        j = int(p[:, label].argmin())
        if p[j, label] >= current_p:
            continue
        current[i], current_p = candidates[i][j], p[j, label]
        changed.add(i)
        if int(p[j].argmax()) != label:
            result.status, result.adversarial_prediction = "success", labels[int(p[j].argmax())]
            break
    if result.status != "success":
        result.status = "failed"
    result.adversarial = w.render(current)
    result.changes = [{"index": i, "from": words[i], "to": current[i]} for i in sorted(changed)]
    result.original_pieces, result.adversarial_pieces = w.pieces(words, changed), w.pieces(current, changed)
    return result


def run_attacks(searches: list[Search], predict: Callable[[list[str]], np.ndarray]) -> list[AttackResult]:
    """Drive every search to its end, scoring the texts all of them ask for in one call per round (each
    distinct text once). Queries are counted per example, as distinct texts it had scored."""
    results: list[AttackResult | None] = [None] * len(searches)
    seen: list[set[str]] = [set() for _ in searches]
    pending = {k: next(s) for k, s in enumerate(searches)}
    cache: dict[str, np.ndarray] = {}
    while pending:
        new = list(dict.fromkeys(t for texts in pending.values() for t in texts if t not in cache))
        if new:
            cache.update(zip(new, predict(new)))
        for k, texts in list(pending.items()):
            seen[k].update(texts)
            try:
                pending[k] = searches[k].send(np.stack([cache[t] for t in texts]))
            except StopIteration as stop:
                results[k] = stop.value
                results[k].queries = len(seen[k])
                del pending[k]
        if len(cache) > 200_000:  # a bound on memory; rounds rarely reuse old texts
            cache.clear()
    return results
