"""Extractive question answering (SQuAD v1.1): the answer is a span of the context.

Features and post-processing follow the Hugging Face question-answering example (run_qa.py's
`prepare_train_features` / `prepare_validation_features`, utils_qa.py's `postprocess_qa_predictions`):
a context longer than the window is split into overlapping windows of `max_length` tokens that
share `doc_stride` tokens; a training window that does not hold the whole answer points at the CLS
token; at prediction, the answer is the best span over all windows (start <= end, at most
`max_answer_length` tokens, inside the context, among the `N_BEST` best starts and ends), mapped back
to characters of the original context through the tokenizer's offset mapping. The CLS "answer" is
never chosen (SQuAD v1.1 has no unanswerable questions). Scores are SQuAD v1.1's official exact
match and F1 (danlu/data/squad.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from danlu.data.squad import QAExample, load_squad, squad_metrics
from danlu.errors import DanluError
from danlu.tasks.base import DataSpec, TaskData

NAME = "qa"
PRIMARY_METRIC = "f1"
HEAD = "AutoModelForQuestionAnswering"
PEFT_TASK_TYPE = "QUESTION_ANS"
ROUTE = "/v1/qa"
ONNX_OUTPUTS = ("start_logits", "end_logits")
OPTIONS = ("doc_stride", "max_answer_length")  # FinetuneArgs fields read here (recorded in danlu.json)
TRAIN_METRICS = ("f1", "exact_match")

MAX_LENGTH = 384  # the window the standard recipe uses (the stages' --max-length default of 128 is too short)
DOC_STRIDE = 128  # tokens two neighbouring windows share; 0 = min(128, max_length // 2), as HF's QA pipeline
MAX_ANSWER_LENGTH = 30  # tokens
N_BEST = 20  # best starts x best ends searched per window


# ---- data and model -----------------------------------------------------------------------------


def load_data(spec: DataSpec) -> TaskData:
    """SQuAD JSON / JSON Lines files or the packaged `squad` (validation = the official dev set)."""
    from danlu.artifact import fingerprint_files

    data = load_squad(spec.data, spec.seed, spec.val_ratio, spec.test_ratio, spec.max_train_examples)
    return TaskData(data.splits, [], data.source, fingerprint_files(data.files), data.split_info)


def build_model(model_path: Path, labels: list[str]) -> torch.nn.Module:
    """A span-extraction model (fresh start/end head) from a pretrained encoder folder."""
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized qa_outputs" notice is expected here
    try:
        return AutoModelForQuestionAnswering.from_pretrained(str(model_path))
    finally:
        hf_logging.set_verbosity(verbosity)


# ---- features -----------------------------------------------------------------------------------


MIN_QUESTION_TOKENS = 16


def _question_limit(tokenizer, max_length: int, doc_stride: int) -> int:
    """The most question tokens that leave a context window longer than the stride (the tokenizer
    refuses otherwise); DanluError when the window leaves too little room for any question."""
    limit = max_length - tokenizer.num_special_tokens_to_add(pair=True) - doc_stride - 1
    if doc_stride < 0 or limit < MIN_QUESTION_TOKENS:
        raise DanluError(f"--doc-stride must be in [1, {doc_stride + limit - MIN_QUESTION_TOKENS}] for "
                         f"--max-length {max_length} (a window holds the question, the special tokens and more "
                         f"than the stride of context), got {doc_stride}")
    return limit


def _clip_questions(tokenizer, questions: list[str], max_length: int, doc_stride: int) -> list[str]:
    """Questions with leading spaces stripped (as the recipe does) and cut to the tokens that leave a
    context window longer than the stride (the tokenizer refuses otherwise); SQuAD's are far shorter."""
    limit = _question_limit(tokenizer, max_length, doc_stride)
    questions = [q.lstrip() for q in questions]
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [q if len(offsets) <= limit else q[:offsets[limit - 1][1]]
            for q, offsets in zip(questions, encoded["offset_mapping"])]


def _windows(tokenizer, examples: Sequence[QAExample], max_length: int, doc_stride: int):
    """The tokenizer's overlapping windows of every (question, context) pair, unpadded."""
    doc_stride = doc_stride or min(DOC_STRIDE, max_length // 2)
    pad_on_right = tokenizer.padding_side == "right"
    questions = _clip_questions(tokenizer, [e.question for e in examples], max_length, doc_stride)
    contexts = [e.context for e in examples]
    return tokenizer(questions if pad_on_right else contexts, contexts if pad_on_right else questions,
                     truncation="only_second" if pad_on_right else "only_first", max_length=max_length,
                     stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True), pad_on_right


def _model_inputs(encoded, i: int) -> dict[str, list[int]]:
    return {k: encoded[k][i] for k in ("input_ids", "token_type_ids") if k in encoded}


def prepare_train_features(tokenizer, examples: Sequence[QAExample], max_length: int = MAX_LENGTH,
                           doc_stride: int = 0) -> list[dict[str, Any]]:
    """One feature per window with `start_positions` / `end_positions` of the first gold answer, or
    both at the CLS token when the window does not hold the whole answer."""
    encoded, pad_on_right = _windows(tokenizer, examples, max_length, doc_stride)
    context_id = 1 if pad_on_right else 0
    features = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        input_ids = encoded["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        example = examples[encoded["overflow_to_sample_mapping"][i]]
        start = end = cls_index
        if example.answer_starts:
            start_char = example.answer_starts[0]
            end_char = start_char + len(example.answer_texts[0])
            sequence_ids = encoded.sequence_ids(i)
            first = sequence_ids.index(context_id)
            last = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_id)
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                # The recipe's loops, kept inside the context: the recipe's first loop runs on over the
                # closing [SEP] (offsets (0, 0)) when the answer starts at the window's last context token.
                context_end = last
                while first <= context_end and offsets[first][0] <= start_char:
                    first += 1
                while offsets[last][1] >= end_char:
                    last -= 1
                start, end = first - 1, last + 1
        features.append({**_model_inputs(encoded, i), "start_positions": start, "end_positions": end})
    return features


def prepare_validation_features(tokenizer, examples: Sequence[QAExample], max_length: int = MAX_LENGTH,
                                doc_stride: int = 0) -> list[dict[str, Any]]:
    """One feature per window: model inputs, the index of its example, and the character span of
    each token in the context (None for the question, special tokens and padding)."""
    encoded, pad_on_right = _windows(tokenizer, examples, max_length, doc_stride)
    context_id = 1 if pad_on_right else 0
    features = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        features.append({**_model_inputs(encoded, i),
                         "example_index": encoded["overflow_to_sample_mapping"][i],
                         "offset_mapping": [tuple(o) if s == context_id else None
                                            for o, s in zip(offsets, sequence_ids)]})
    return features


def pad_batch(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask (and token_type_ids) padded on the right to the longest feature."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": torch.full((len(features), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(features), width), dtype=torch.long)}
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(feature["input_ids"])
        batch["attention_mask"][row, :n] = 1
        if "token_type_ids" in batch:
            batch["token_type_ids"][row, :n] = torch.tensor(feature["token_type_ids"])
    return batch


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


# ---- training -----------------------------------------------------------------------------------


class SpanObjective:
    """Cross-entropy of the start and of the end position, halved (the HF QA head's loss); one loss
    term per window. Padding positions are masked out, so a window's loss does not depend on what
    else shares its batch."""

    def __init__(self, features: list[dict[str, Any]], pad_id: int):
        self.features, self.pad_id = features, pad_id

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        chosen = [self.features[i] for i in indices]
        batch = pad_batch(chosen, self.pad_id)
        batch["start_positions"] = torch.tensor([f["start_positions"] for f in chosen])
        batch["end_positions"] = torch.tensor([f["end_positions"] for f in chosen])
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["start_positions"])

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")}
        outputs = model(**inputs)
        padding = batch["attention_mask"] == 0
        loss = 0.0
        for logits, gold in ((outputs.start_logits, batch["start_positions"]),
                             (outputs.end_logits, batch["end_positions"])):
            logits = logits.float().masked_fill(padding, torch.finfo(torch.float32).min)
            loss = loss + torch.nn.functional.cross_entropy(logits, gold, reduction="sum")
        return loss / 2


def make_objective(tokenizer, examples: Sequence[QAExample], labels: list[str], max_length: int,
                   doc_stride: int = 0, max_answer_length: int = MAX_ANSWER_LENGTH
                   ) -> tuple[SpanObjective, list[int]]:
    """The span objective over the windows of `examples`, and each window's token length
    (`max_answer_length` matters only at prediction)."""
    features = prepare_train_features(tokenizer, examples, max_length, doc_stride)
    return SpanObjective(features, _pad_id(tokenizer)), [len(f["input_ids"]) for f in features]


# ---- prediction ---------------------------------------------------------------------------------


def _device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.inference_mode()
def window_logits(model, tokenizer, features: list[dict[str, Any]], batch_size: int = 32,
                  progress: str = "") -> list[tuple[np.ndarray, np.ndarray]]:
    """(start_logits, end_logits) of each feature, unpadded, in the order of `features` (run in
    batches of similar length)."""
    from tqdm.auto import tqdm

    device = _device(model)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    results: list[Any] = [None] * len(features)
    bar = tqdm(total=len(order), desc=progress, unit="window", disable=not progress, leave=False,
               dynamic_ncols=True)
    for begin in range(0, len(order), batch_size):
        ids = order[begin:begin + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([features[i] for i in ids], _pad_id(tokenizer)).items()}
        outputs = model(**batch)
        starts = torch.as_tensor(outputs.start_logits).float().cpu().numpy()
        ends = torch.as_tensor(outputs.end_logits).float().cpu().numpy()
        for row, i in enumerate(ids):
            n = len(features[i]["input_ids"])
            results[i] = (starts[row, :n], ends[row, :n])
        bar.update(len(ids))
    bar.close()
    return results


@dataclass
class Answer:
    text: str
    start: int  # character offsets into the context: context[start:end] == text
    end: int
    score: float  # softmax over the n-best spans' start + end logits


def best_answers(examples: Sequence[QAExample], features: list[dict[str, Any]],
                 logits: list[tuple[np.ndarray, np.ndarray]], max_answer_length: int = MAX_ANSWER_LENGTH,
                 n_best: int = N_BEST) -> list[Answer]:
    """The best valid span of each example over all its windows (utils_qa's v1.1 post-processing)."""
    by_example: list[list[int]] = [[] for _ in examples]
    for i, feature in enumerate(features):
        by_example[feature["example_index"]].append(i)
    answers = []
    for example, feature_ids in zip(examples, by_example):
        candidates = []  # (score, start char, end char)
        for i in feature_ids:
            offsets, (start_logits, end_logits) = features[i]["offset_mapping"], logits[i]
            best_starts = np.argsort(start_logits)[-1:-n_best - 1:-1].tolist()
            best_ends = np.argsort(end_logits)[-1:-n_best - 1:-1].tolist()
            for s in best_starts:
                if offsets[s] is None:
                    continue
                for e in best_ends:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    candidates.append((float(start_logits[s] + end_logits[e]), offsets[s][0], offsets[e][1]))
        candidates = sorted(candidates, key=lambda c: c[0], reverse=True)[:n_best]
        if not candidates:
            answers.append(Answer("", 0, 0, 0.0))
            continue
        scores = np.array([c[0] for c in candidates])
        probability = 1.0 / float(np.exp(scores - scores[0]).sum())
        _, start, end = candidates[0]
        answers.append(Answer(example.context[start:end], start, end, probability))
    return answers


def answer_questions(model, tokenizer, examples: Sequence[QAExample], max_length: int = MAX_LENGTH,
                     doc_stride: int = 0, max_answer_length: int = MAX_ANSWER_LENGTH,
                     batch_size: int = 32, progress: str = "") -> tuple[list[Answer], int]:
    """Windows, model, post-processing: one answer per example, and how many windows there were."""
    features = prepare_validation_features(tokenizer, examples, max_length, doc_stride)
    logits = window_logits(model, tokenizer, features, batch_size, progress)
    return best_answers(examples, features, logits, max_answer_length), len(features)


def score(model, tokenizer, examples: Sequence[QAExample], labels: list[str], max_length: int,
          progress: str = "", doc_stride: int = 0, max_answer_length: int = MAX_ANSWER_LENGTH,
          batch_size: int = 32) -> dict[str, Any]:
    """SQuAD v1.1 exact match and F1 (in [0, 1]) over `examples`, and how many questions and windows."""
    answers, windows = answer_questions(model, tokenizer, examples, max_length, doc_stride, max_answer_length,
                                        batch_size, progress)
    return {**squad_metrics([a.text for a in answers], [e.answer_texts for e in examples]), "windows": windows}


def predict(model, tokenizer, inputs: Sequence[dict[str, str]], labels: list[str], max_length: int,
            batch_size: int = 32, doc_stride: int = 0,
            max_answer_length: int = MAX_ANSWER_LENGTH) -> list[dict[str, Any]]:
    """{"answer", "start", "end", "score"} per {"question", "context"}; context[start:end] == answer."""
    examples = [QAExample(str(i), x["question"], x["context"]) for i, x in enumerate(inputs)]
    if not examples:
        return []
    answers, _ = answer_questions(model, tokenizer, examples, max_length, doc_stride, max_answer_length,
                                  batch_size)
    return [{"answer": a.text, "start": a.start, "end": a.end, "score": round(a.score, 6)} for a in answers]


# ---- command line and server --------------------------------------------------------------------


def input_of(example: QAExample) -> dict[str, str]:
    """The predict input an example corresponds to."""
    return {"question": example.question, "context": example.context}


def decision(result: dict[str, Any]) -> tuple[int, int]:
    """What two predictions must share to agree (ONNX parity, compress): the answer's character span."""
    return result["start"], result["end"]


def _checked(item: Any, where: str) -> dict[str, str]:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object with 'question' and 'context'")
    for key in ("question", "context"):
        value = item.get(key)
        if not isinstance(value, str):
            raise ValueError(f"{where}: missing or non-text {key!r}")
        if not value.strip():
            raise ValueError(f"{where}: empty {key}")
    return {"question": item["question"], "context": item["context"]}


def validate_request(inputs: Any) -> list[dict[str, str]]:
    """The route's `input`: one {"question", "context"} object or a list of them; ValueError -> 400."""
    items = inputs if isinstance(inputs, list) else [inputs]
    if not items:
        raise ValueError("'input' is empty")
    return [_checked(item, f"input[{i}]") for i, item in enumerate(items)]


def read_inputs(texts: list[str], input_file: str, question: str = "", context: str = "") -> list[dict[str, str]]:
    """`danlu predict --question Q --context C`, or `--input FILE` of JSON Lines {"question", "context"}."""
    import json

    if texts:
        raise DanluError("the qa task takes --question and --context (or --input FILE), not positional texts")
    inputs = []
    if question or context:
        try:
            inputs.append(_checked({"question": question, "context": context}, "--question/--context"))
        except ValueError as e:
            raise DanluError(str(e)) from None
    if input_file:
        path = Path(input_file)
        if not path.is_file():
            raise DanluError(f"no such file: {path}")
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                inputs.append(_checked(json.loads(line), f"{path}:{line_number}"))
            except json.JSONDecodeError as e:
                raise DanluError(f"{path}:{line_number}: not valid JSON ({e.msg})") from None
            except ValueError as e:
                raise DanluError(str(e)) from None
    if not inputs:
        raise DanluError("nothing to answer: give --question and --context, or --input FILE")
    return inputs


def format_prediction(input: dict[str, str], result: dict[str, Any]) -> str:
    """`answer<TAB>score 0.912  characters 120-131`."""
    return f"{result['answer']}\tscore {result['score']:.3f}  characters {result['start']}-{result['end']}"


def format_metrics(metrics: dict[str, Any]) -> str:
    """Exact match and F1 as SQuAD's official script prints them (0-100), and the question count."""
    return (f"exact_match {100 * metrics['exact_match']:.2f}  f1 {100 * metrics['f1']:.2f}  "
            f"questions {metrics['examples']}")
