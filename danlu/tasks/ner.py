"""Named-entity recognition: a token classifier over IOB2 tags, scored by entity with seqeval.

Words become subword tokens; only the first subword of each word carries its label (-100 elsewhere),
as in the transformers token-classification example. A sentence longer than `max_length` tokens is
cut into overlapping windows of whole words, never truncated: in training each window is one item;
at prediction each word takes its prediction from the window where it is most central (the one that
gives it the most context on its poorer side). Predictions are decoded into entities with the
character offsets of the original text (the fast tokenizer's offset mapping), so multi-byte text
(CJK, emoji, accents) keeps its positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from danlu.data.ner import TaggedSentence, load_ner, to_iob2
from danlu.errors import DanluError

NAME = "ner"
PRIMARY_METRIC = "f1"
HEAD = "AutoModelForTokenClassification"
PEFT_TASK_TYPE = "TOKEN_CLS"
ROUTE = "/v1/ner"
ONNX_OUTPUTS = ("logits",)
KIND = "token-classifier"  # what /v1/models and server errors call a model of this task
TRAIN_METRICS = ("f1", "precision", "recall", "accuracy", "loss")  # recorded per evaluation in training
IGNORE = -100  # label of tokens that carry no loss (specials, padding, non-first subwords)


# ---- data and model -----------------------------------------------------------------------------


def load_data(spec):
    """spec.data as tagged sentences (packaged conll2003 / wnut-ner, a CoNLL or JSONL file, a folder)."""
    from danlu.tasks.base import TaskData

    data = load_ner(spec.data, spec.seed, spec.val_ratio, spec.test_ratio)
    splits, split_info = data.splits, data.split_info
    if spec.max_train_examples and len(splits["train"]) > spec.max_train_examples:
        import random

        keep = sorted(random.Random(spec.seed).sample(range(len(splits["train"])), spec.max_train_examples))
        splits = {**splits, "train": [splits["train"][i] for i in keep]}
        split_info = {**split_info, "max_train_examples": spec.max_train_examples,
                      "sizes": {**split_info["sizes"], "train": len(keep)}}
    return TaskData(splits, data.labels, data.source, data.fingerprint, split_info)


def build_model(model_path: Path, labels: list[str]) -> torch.nn.Module:
    """A token classifier with a fresh head over `labels`, from a pretrained encoder folder."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(
        str(model_path), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)


def input_of(example: TaggedSentence) -> str:
    """The raw text a tagged sentence stands for (its words joined by spaces)."""
    return " ".join(example.tokens)


def decision(result: dict[str, Any]) -> list[tuple[str, int, int]]:
    """What two predictions must share to agree (ONNX parity): the entity spans and their types."""
    return [(e["type"], e["start"], e["end"]) for e in result["entities"]]


# ---- words -> token windows ---------------------------------------------------------------------


@dataclass
class Window:
    """One model input: a run of whole words of item `item`, words [first_word, end_word)."""

    item: int
    first_word: int
    end_word: int
    input_ids: list[int]
    word_at: list[int]  # per token: the word index (in the item) at a word's first subword, else -1


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence ([CLS] ... [SEP] for BERT)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    at = next(i for i in range(len(full)) if full[i:i + len(bare)] == bare)
    return full[:at], full[at + len(bare):]


def _group(word_ids: list[int | None], n_words: int) -> list[list[int]]:
    """Token positions of each word (a word the tokenizer dropped entirely gets none)."""
    positions: list[list[int]] = [[] for _ in range(n_words)]
    for position, word in enumerate(word_ids):
        if word is not None:
            positions[word].append(position)
    return positions


def word_pieces(tokenizer, sentences: Sequence[list[str]]) -> list[list[list[int]]]:
    """Subword ids of each word of each pre-split sentence (one fast, batched tokenizer call)."""
    if not sentences:
        return []
    enc = tokenizer([list(s) for s in sentences], is_split_into_words=True, add_special_tokens=False)
    out = []
    for i, words in enumerate(sentences):
        ids = enc["input_ids"][i]
        out.append([[ids[p] for p in group] for group in _group(enc.word_ids(i), len(words))])
    return out


def text_pieces(tokenizer, texts: Sequence[str]) -> tuple[list[list[list[int]]], list[list[tuple[int, int]]]]:
    """Words of raw texts as the tokenizer splits them: each word's subword ids and its character span."""
    if not texts:
        return [], []
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    pieces, spans = [], []
    for i in range(len(texts)):
        word_ids = enc.word_ids(i)
        n_words = max((w for w in word_ids if w is not None), default=-1) + 1
        groups = [g for g in _group(word_ids, n_words) if g]
        ids, offsets = enc["input_ids"][i], enc["offset_mapping"][i]
        pieces.append([[ids[p] for p in g] for g in groups])
        spans.append([(offsets[g[0]][0], offsets[g[-1]][1]) for g in groups])
    return pieces, spans


def plan_windows(counts: list[int], budget: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) that each hold at most `budget` tokens and together cover every word;
    consecutive windows overlap by up to half the budget. A word longer than the budget counts as
    `budget` tokens (its tail subwords are dropped; its first subword, which carries the label, stays)."""
    counts = [min(c, budget) for c in counts]
    n = len(counts)
    if sum(counts) <= budget:
        return [(0, n)]
    windows, start = [], 0
    while True:
        end, used = start, 0
        while end < n and used + counts[end] <= budget:
            used += counts[end]
            end += 1
        windows.append((start, end))
        if end >= n:
            return windows
        following, overlap = end, 0
        while following - 1 > start and overlap + counts[following - 1] <= budget // 2:
            following -= 1
            overlap += counts[following]
        start = following


def word_owners(windows: list[tuple[int, int]], n_words: int) -> list[int]:
    """For each word, the window where it is most central: the largest min(left, right) context in
    words (a side that reaches the start or end of the sentence counts as full context); ties go to
    the earlier window."""
    best = [(-1, 0)] * n_words
    for k, (start, end) in enumerate(windows):
        for w in range(start, end):
            left = w - start if start > 0 else n_words
            right = end - 1 - w if end < n_words else n_words
            if min(left, right) > best[w][0]:
                best[w] = (min(left, right), k)
    return [k for _, k in best]


def make_windows(tokenizer, pieces: list[list[list[int]]], max_length: int) -> list[Window]:
    """Every item's words packed into windows of at most `max_length` tokens, specials included."""
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise DanluError(f"--max-length {max_length} leaves no room for words after the special tokens")
    windows = []
    for item, words in enumerate(pieces):
        for start, end in plan_windows([len(p) for p in words], budget):
            ids, word_at = list(prefix), [-1] * len(prefix)
            for w in range(start, end):
                piece = words[w][:budget]
                ids += piece
                word_at += [w] + [-1] * (len(piece) - 1) if piece else []
            windows.append(Window(item, start, end, ids + suffix, word_at + [-1] * len(suffix)))
    return windows


def _uses_token_types(tokenizer) -> bool:
    return "token_type_ids" in getattr(tokenizer, "model_input_names", ())


def pad_batch(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of input_ids (+ token_type_ids, labels) padded to the longest: pad id, 0 and -100."""
    width = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "token_type_ids": 0, "labels": IGNORE}
    batch = {k: torch.full((len(rows), width), fill[k], dtype=torch.long) for k in rows[0]}
    batch["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        for key, values in row.items():
            batch[key][i, :n] = torch.tensor(values)
        batch["attention_mask"][i, :n] = 1
    return batch


def _model_rows(tokenizer, windows: list[Window]) -> list[dict[str, list[int]]]:
    types = _uses_token_types(tokenizer)
    return [{"input_ids": w.input_ids, **({"token_type_ids": [0] * len(w.input_ids)} if types else {})}
            for w in windows]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


# ---- training -----------------------------------------------------------------------------------


class TokenClassificationObjective:
    """Cross-entropy summed over labelled tokens (the first subword of each word); count = those tokens."""

    def __init__(self, rows: list[dict[str, list[int]]], pad_id: int):
        self.rows, self.pad_id = rows, pad_id

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return pad_batch([self.rows[i] for i in indices], self.pad_id)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        keep = labels != IGNORE
        return torch.nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")


def label_ids(examples: Sequence[TaggedSentence], labels: list[str]) -> list[list[int]]:
    """Each word's label id; a tag the model does not know is a DanluError."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({t for e in examples for t in e.tags} - set(index))
    if unknown:
        raise DanluError(f"the data has tags the model does not know: {', '.join(unknown)} "
                         f"(it knows: {', '.join(labels)})")
    return [[index[t] for t in e.tags] for e in examples]


def make_objective(tokenizer, examples: Sequence[TaggedSentence], labels: list[str], max_length: int):
    """The objective over the windows of `examples`, and each window's token length."""
    ids = label_ids(examples, labels)
    windows = make_windows(tokenizer, word_pieces(tokenizer, [e.tokens for e in examples]), max_length)
    rows = _model_rows(tokenizer, windows)
    for row, window in zip(rows, windows):
        row["labels"] = [ids[window.item][w] if w >= 0 else IGNORE for w in window.word_at]
    return TokenClassificationObjective(rows, _pad_id(tokenizer)), [len(w.input_ids) for w in windows]


# ---- inference ----------------------------------------------------------------------------------


@torch.inference_mode()
def word_probabilities(model, tokenizer, pieces: list[list[list[int]]], max_length: int, batch_size: int = 32,
                       progress: str = "") -> list[list[torch.Tensor | None]]:
    """Per item, per word: the label probabilities at the word's first subword, taken from the window
    where the word is most central (None for a word the tokenizer turned into no tokens)."""
    from tqdm.auto import tqdm

    from danlu.runtime import model_device

    windows = make_windows(tokenizer, pieces, max_length)
    rows = _model_rows(tokenizer, windows)
    owners: dict[int, list[int]] = {}
    per_item: dict[int, list[int]] = {}
    for k, window in enumerate(windows):
        per_item.setdefault(window.item, []).append(k)
    for item, ks in per_item.items():
        owners[item] = [ks[o] for o in word_owners([(windows[k].first_word, windows[k].end_word) for k in ks],
                                                    len(pieces[item]))]
    found: dict[int, dict[int, torch.Tensor]] = {}
    device, pad_id = model_device(model), _pad_id(tokenizer)
    order = sorted(range(len(windows)), key=lambda k: len(windows[k].input_ids))
    bar = tqdm(total=len(pieces), desc=progress, unit="ex", disable=not progress, leave=False, dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        ks = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([rows[k] for k in ks], pad_id).items()}
        probs = torch.softmax(torch.as_tensor(model(**batch).logits).float(), dim=-1).cpu()
        for row, k in enumerate(ks):
            found[k] = {w: probs[row, t] for t, w in enumerate(windows[k].word_at) if w >= 0}
        bar.update(sum(1 for k in ks if windows[k].first_word == 0))
    bar.close()
    return [[found[owners[item][w]].get(w) for w in range(len(words))] for item, words in enumerate(pieces)]


def decode_tags(probs: list[torch.Tensor | None], labels: list[str]) -> tuple[list[str], list[float]]:
    """IOB2 tags (ill-formed I- after O repaired into B-) and the probability of each predicted tag;
    a word with no tokens is O."""
    raw = [labels[int(p.argmax())] if p is not None else "O" for p in probs]
    confidence = [float(p.max()) if p is not None else 1.0 for p in probs]
    return to_iob2(raw), confidence


def entities(tags: list[str], confidence: list[float], spans: list[tuple[int, int]], text: str
             ) -> list[dict[str, Any]]:
    """Entity spans of IOB2 word tags: type, text, character start/end in `text`, mean word probability."""
    found: list[dict[str, Any]] = []
    scores: list[list[float]] = []
    for tag, p, (start, end) in zip(tags, confidence, spans):
        if tag.startswith("B-"):
            found.append({"type": tag[2:], "start": start, "end": end})
            scores.append([p])
        elif tag.startswith("I-") and found:
            found[-1]["end"] = end
            scores[-1].append(p)
    for entity, ps in zip(found, scores):
        entity["text"] = text[entity["start"]:entity["end"]]
        entity["score"] = round(sum(ps) / len(ps), 4)
    return [{k: e[k] for k in ("type", "text", "start", "end", "score")} for e in found]


def predict(model, tokenizer, inputs: Sequence[str], labels: list[str], max_length: int,
            batch_size: int = 32) -> list[dict[str, Any]]:
    """The entities of each raw text: [{"entities": [{type, text, start, end, score}, ...]}, ...]."""
    pieces, spans = text_pieces(tokenizer, inputs)
    results = []
    for text, probs, word_spans in zip(inputs, word_probabilities(model, tokenizer, pieces, max_length,
                                                                   batch_size), spans):
        tags, confidence = decode_tags(probs, labels)
        results.append({"entities": entities(tags, confidence, word_spans, text)})
    return results


# ---- scoring ------------------------------------------------------------------------------------


def entity_metrics(true: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    """Entity-level precision/recall/F1 (micro, and per type) with seqeval's strict IOB2 scheme,
    plus token (word) accuracy."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    report = classification_report(true, predicted, mode="strict", scheme=IOB2, output_dict=True,
                                   zero_division=0)
    micro = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    words = sum(len(t) for t in true)
    correct = sum(a == b for t, p in zip(true, predicted) for a, b in zip(t, p))
    return {
        "precision": float(micro["precision"]), "recall": float(micro["recall"]), "f1": float(micro["f1-score"]),
        "accuracy": correct / words if words else 0.0,
        "entities": int(micro["support"]),
        "per_type": {kind: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                            "f1": float(v["f1-score"]), "support": int(v["support"])}
                     for kind, v in sorted(report.items())},
    }


def score(model, tokenizer, examples: Sequence[TaggedSentence], labels: list[str], max_length: int,
          progress: str = "", batch_size: int = 64) -> dict[str, Any]:
    """Entity P/R/F1 (strict IOB2, micro and per type), token accuracy, and the mean cross-entropy
    per word; a gold tag the model does not know is a DanluError."""
    if not examples:
        raise DanluError("no examples to evaluate")
    gold_ids = label_ids(examples, labels)
    pieces = word_pieces(tokenizer, [e.tokens for e in examples])
    probs = word_probabilities(model, tokenizer, pieces, max_length, batch_size, progress)
    predicted, nll, counted = [], 0.0, 0
    for item_probs, ids in zip(probs, gold_ids):
        predicted.append(decode_tags(item_probs, labels)[0])
        for p, gold in zip(item_probs, ids):
            if p is not None:
                nll -= float(torch.log(p[gold].clamp_min(1e-12)))
                counted += 1
    metrics = entity_metrics([e.tags for e in examples], predicted)
    return {**metrics, "loss": nll / max(counted, 1), "examples": len(examples)}


# ---- the command line and the server ------------------------------------------------------------


def read_inputs(texts: list[str], input_file: str, **_: str) -> list[str]:
    """Texts from the command line and --input FILE, as for classification (one per line in .txt,
    else the `text` column of a CSV/TSV/JSONL/Parquet table)."""
    from danlu.tasks import classify

    return classify.read_inputs(texts, input_file)


def validate_request(inputs: Any) -> list[str]:
    """The `input` of a /v1/ner request: a string or a non-empty list of strings (as /v1/classify)."""
    from danlu.tasks import classify

    return classify.validate_request(inputs)


def format_prediction(input: str, result: dict[str, Any]) -> str:
    """The text, then one line per entity: type, offsets, score and the entity's text."""
    lines = [input]
    for e in result["entities"]:
        lines.append(f"  {e['type']:<12} {e['start']:>5}-{e['end']:<5} {e['score']:.3f}  {e['text']}")
    if not result["entities"]:
        lines.append("  (no entities)")
    return "\n".join(lines)


def format_metrics(metrics: dict[str, Any]) -> str:
    """Micro precision/recall/F1, token accuracy and loss, then a per-type table."""
    where = f"{metrics['split']}: " if metrics.get("split") else ""
    lines = [f"{where}entities (seqeval strict IOB2, micro): precision {metrics['precision']:.4f}  "
             f"recall {metrics['recall']:.4f}  f1 {metrics['f1']:.4f}",
             f"token accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  "
             f"({metrics['examples']} sentences, {metrics['entities']} entities)",
             f"{'type':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for kind, m in metrics["per_type"].items():
        lines.append(f"{kind:<14}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>9}")
    return "\n".join(lines)
