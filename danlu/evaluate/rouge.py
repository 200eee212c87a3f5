"""ROUGE-1/2/L of generated texts against references (the `rouge-score` package, Google's reference
implementation), with CJK text scored character by character."""

from __future__ import annotations

import re

# rouge-score's own tokenizer keeps only [a-z0-9] runs, which scores any Chinese text 0. We keep those
# runs exactly as it does (lower-cased, Porter-stemmed when longer than 3 characters) and add each
# CJK character as a token of its own, the usual choice for Chinese ROUGE.
_TOKEN = re.compile(r"[a-z0-9]+|[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class _Tokenizer:
    def __init__(self):
        from nltk.stem import porter

        self.stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        return [self.stemmer.stem(t) if len(t) > 3 and t.isascii() else t
                for t in _TOKEN.findall(text.lower())]


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (in [0, 1]) of `predictions` against `references`."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_Tokenizer())
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        for name, s in scorer.score(reference, prediction).items():
            totals[name] += s.fmeasure
    n = max(1, len(predictions))
    return {name: total / n for name, total in totals.items()}
