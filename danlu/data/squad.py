"""Question answering data in the SQuAD formats, and SQuAD v1.1's official exact match and F1.

Readers: SQuAD JSON (`{"version", "data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`,
v1.1 and v2.0) and JSON Lines rows `{"id", "question", "context", "answers": {"text": [...],
"answer_start": [...]}}` (the layout of the Hugging Face `squad` data set). Every answer must sit in
its context at `answer_start`; a row that breaks this, lacks a field, or has an empty question or
context is a one-line error naming the file and the question id (or line).

SQuAD v2.0's unanswerable questions (`is_impossible`) are skipped, with a count printed: danlu's qa
task extracts a span for every question (v1.1 style), so it has no "no answer" to train or predict.
"""

from __future__ import annotations

import json
import random
import re
import string
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from danlu.data.splits import find_split_files
from danlu.data.textfile import read_text
from danlu.errors import DanluError, did_you_mean


@dataclass(frozen=True)
class QAExample:
    """One question about one context, with its gold answers (character offsets into the context)."""

    id: str
    question: str
    context: str
    answer_texts: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()


@dataclass
class QAData:
    """train/validation/test questions, where they came from, and how the splits were made."""

    splits: dict[str, list[QAExample]]
    source: str
    files: list[Path]
    split_info: dict = field(default_factory=dict)


# ---- reading ------------------------------------------------------------------------------------


def _example(where: str, qid: object, question: object, context: object, texts: object, starts: object,
             need_answer: bool) -> QAExample:
    """A checked example; `where` names the file (and line) for errors."""
    label = f"{where}: question {qid!r}" if qid not in (None, "") else where
    if qid in (None, ""):
        raise DanluError(f"{where}: a question without an 'id'")
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str):
            raise DanluError(f"{label}: missing or non-text {name!r}")
        if not value.strip():
            raise DanluError(f"{label}: empty {name}")
    if not isinstance(texts, list) or not isinstance(starts, list):
        raise DanluError(f"{label}: 'answers' needs lists 'text' and 'answer_start'")
    if len(texts) != len(starts):
        raise DanluError(f"{label}: {len(texts)} answer texts but {len(starts)} answer_start values")
    if need_answer and not texts:
        raise DanluError(f"{label}: no answers")
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text:
            raise DanluError(f"{label}: an empty answer text")
        if not isinstance(start, int) or isinstance(start, bool):
            raise DanluError(f"{label}: answer_start {start!r} is not an integer")
        found = context[start:start + len(text)] if 0 <= start else ""
        if found != text:
            raise DanluError(f"{label}: answer_start {start} does not point at the answer {text!r} "
                             f"(the context has {found!r} there)")
    return QAExample(str(qid), question, context, tuple(texts), tuple(starts))


def _read_squad_json(path: Path, document: dict) -> list[QAExample]:
    examples, impossible = [], 0
    articles = document.get("data")
    if not isinstance(articles, list):
        raise DanluError(f"{path}: a SQuAD file needs a 'data' list of articles")
    for article in articles:
        for paragraph in article.get("paragraphs") or []:
            context = paragraph.get("context")
            for qa in paragraph.get("qas") or []:
                if qa.get("is_impossible"):
                    impossible += 1
                    continue
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    raise DanluError(f"{path}: question {qa.get('id')!r}: missing 'answers'")
                examples.append(_example(
                    str(path), qa.get("id"), qa.get("question"), context,
                    [a.get("text") for a in answers], [a.get("answer_start") for a in answers],
                    need_answer=True))
    if impossible:
        print(f"{path}: skipped {impossible} unanswerable questions (SQuAD v2.0 'is_impossible'); "
              "the qa task answers every question with a span", file=sys.stderr)
    return examples


def _read_jsonl(path: Path, text: str) -> list[QAExample]:
    """The questions of JSON Lines `text`, read from `path` (named in errors with the line)."""
    examples = []
    for line_number, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DanluError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DanluError(f"{where}: expected a JSON object per line")
        answers = row.get("answers")
        if not isinstance(answers, dict):
            raise DanluError(f"{where}: question {row.get('id')!r}: missing 'answers' "
                             "({'text': [...], 'answer_start': [...]})")
        examples.append(_example(where, row.get("id"), row.get("question"), row.get("context"),
                                 answers.get("text"), answers.get("answer_start"), need_answer=True))
    return examples


def read_qa_file(path: str | Path) -> list[QAExample]:
    """The questions of a SQuAD JSON file (v1.1 or v2.0) or a JSON Lines file; DanluError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise DanluError(f"no such file: {path}")
    text = read_text(path)  # UTF-8, or Chinese GB18030/GBK detected; else a one-line error
    document = None
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # several objects: JSON Lines
    if isinstance(document, dict) and "data" in document:
        examples = _read_squad_json(path, document)
    else:
        examples = _read_jsonl(path, text)
    if not examples:
        raise DanluError(f"{path}: no questions")
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise DanluError(f"{path}: question id {example.id!r} appears twice")
        seen.add(example.id)
    return examples


# ---- splits -------------------------------------------------------------------------------------

def _packaged_squad() -> dict[str, Path]:
    from danlu.assets import install

    folder = install("squad", quiet=True)
    return {"train": folder / "train-v1.1.json", "validation": folder / "dev-v1.1.json"}


PACKAGED = {"squad": _packaged_squad}


def _split_by_context(examples: list[QAExample], seed: int, val_ratio: float, test_ratio: float
                      ) -> tuple[list[QAExample], list[QAExample], list[QAExample]]:
    """Hold out whole contexts (no context is in two splits), seeded."""
    contexts = sorted({e.context for e in examples})
    random.Random(seed).shuffle(contexts)
    n_val, n_test = round(len(contexts) * val_ratio), round(len(contexts) * test_ratio)
    if len(contexts) - n_val - n_test < 1:
        raise DanluError(f"{len(contexts)} contexts are too few to hold out validation and test questions")
    val_set, test_set = set(contexts[:n_val]), set(contexts[n_val:n_val + n_test])
    pick = lambda keep: [e for e in examples if keep(e.context)]  # noqa: E731
    return (pick(lambda c: c not in val_set and c not in test_set), pick(val_set.__contains__),
            pick(test_set.__contains__))


def sample_train(examples: list[QAExample], max_examples: int, seed: int) -> list[QAExample]:
    """A seeded sample of `max_examples` questions (in file order); all of them when 0 or more than there are."""
    if not max_examples or max_examples >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
    return [examples[i] for i in keep]


def load_squad(data: str, seed: int = 42, val_ratio: float = 0.1, test_ratio: float = 0.1,
               max_train_examples: int = 0) -> QAData:
    """Read DATA: `squad` (packaged), a folder of train/dev[/test] files, or one file split by context.

    The packaged set's validation split is the official dev set; its test split is the dev set as
    well (SQuAD v1.1's test set is not public). A folder without a test file does the same.
    """
    path = Path(data).expanduser()
    if data in PACKAGED and not path.exists():
        files = PACKAGED[data]()
    elif path.is_dir():
        files = find_split_files(path, lambda p: p.suffix in (".json", ".jsonl"), "train.json or train.jsonl",
                                 versioned=True)
    elif path.exists():
        files = {"train": path}
    else:
        raise DanluError(f"no such file or packaged data set: {data!r}{did_you_mean(data, list(PACKAGED))}")
    given = {split: read_qa_file(p) for split, p in files.items()}
    info: dict = {"seed": seed, "files": {s: str(p) for s, p in files.items()}}
    if "validation" in given:
        splits = {"train": given["train"], "validation": given["validation"],
                  "test": given.get("test", given["validation"])}
        if "test" not in given:
            info["test"] = "the validation set (no test file)"
    else:
        train, val, test = _split_by_context(given["train"], seed, val_ratio, test_ratio)
        splits = {"train": train, "validation": val, "test": given.get("test", test)}
        info.update(val_ratio=val_ratio, test_ratio=test_ratio, split="by context")
    if max_train_examples:
        splits["train"] = sample_train(splits["train"], max_train_examples, seed)
        info["max_train_examples"] = max_train_examples
    info["sizes"] = {s: len(e) for s, e in splits.items()}
    return QAData(splits, str(data), sorted(set(files.values())), info)


# ---- the official SQuAD v1.1 evaluation (evaluate-v1.1.py), in fractions of 1 -----------------


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, the articles a/an/the, and extra whitespace (as SQuAD v1.1 scores)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = set(string.punctuation)


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    """F1 over the normalised words of the prediction and one gold answer."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], gold_answers: list[tuple[str, ...]]) -> dict[str, float]:
    """Exact match and F1 in [0, 1], each the mean over questions of the max over the gold answers."""
    if not predictions:
        raise DanluError("no questions to evaluate")
    em = sum(max(exact_match(p, g) for g in golds) for p, golds in zip(predictions, gold_answers))
    f1 = sum(max(token_f1(p, g) for g in golds) for p, golds in zip(predictions, gold_answers))
    return {"exact_match": em / len(predictions), "f1": f1 / len(predictions), "examples": len(predictions)}
