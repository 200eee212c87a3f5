"""Conversations for instruction/chat fine-tuning: Alpaca rows, OpenAI-shaped chat rows, and
(document, summary) pairs, read into lists of messages with errors that name file and line.

Accepted rows (one JSON object each, in a JSON array file or a JSONL file; shapes may mix):
- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`, multi-turn;
  an optional system message first, then user and assistant alternating, ending with an assistant turn.
- Alpaca: `{"instruction", "input" (optional), "output", "system" (optional), "history" (optional:
  [[user, assistant], ...] earlier turns)}`; the user turn is the instruction, a blank line, the input.
- summarization: `{"document", "summary"}`; the user turn is SUMMARY_PROMPT with the document in it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from danlu.data.textfile import read_text
from danlu.errors import DanluError, did_you_mean

Message = dict[str, str]  # {"role": ..., "content": ...}
Conversation = list[Message]

ROLES = ("system", "user", "assistant")
SUMMARY_PROMPT = "Summarize the following text in one sentence.\n\n{document}"
PACKAGED = ("alpaca-en", "alpaca-zh", "xsum-sample")
SUFFIXES = (".json", ".jsonl")


@dataclass
class ChatData:
    """train/validation/test conversations and where they came from."""

    splits: dict[str, list[Conversation]]
    source: str
    fingerprint: str
    split_info: dict = field(default_factory=dict)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _json_rows(path: Path) -> Iterator[tuple[Any, int]]:
    """(row, line where it starts) for a JSON array file or a JSONL file."""
    if not path.exists():
        raise DanluError(f"no such file: {path}")
    text = read_text(path)  # UTF-8, or Chinese GB18030/GBK detected; else a one-line error
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[":  # one JSON array: decode element by element to know each one's line
        pos = start + 1
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                raise DanluError(f"{path}:{_line_of(text, pos)}: the JSON array is not closed")
            if text[pos] == "]":
                return
            try:
                row, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DanluError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
            yield row, _line_of(text, pos)
            pos = end
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), number
        except json.JSONDecodeError as e:
            raise DanluError(f"{path}:{number}: invalid JSON ({e.msg})") from None


def check_conversation(messages: Any, where: str) -> Conversation:
    """The messages as plain {"role", "content"} dicts; DanluError naming `where` if malformed."""
    if not isinstance(messages, list) or not messages:
        raise DanluError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DanluError(f"{where}: message {i + 1} must be {{\"role\": one of {', '.join(ROLES)}, "
                             "\"content\": text}")
        out.append({"role": m["role"], "content": m["content"]})
    roles = [m["role"] for m in out]
    if "assistant" not in roles:
        raise DanluError(f"{where}: no assistant turn (nothing to learn from)")
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if body != expected[:len(body)] or body[-1] != "assistant":
        raise DanluError(f"{where}: roles out of order ({', '.join(roles)}); expected an optional system "
                         "message, then user and assistant alternating, ending with assistant")
    return out


def alpaca_conversation(row: dict, where: str) -> Conversation:
    """An Alpaca row as messages: system, history turns, then instruction (+ input) -> output."""
    if "output" not in row:
        raise DanluError(f"{where}: Alpaca row without 'output'")
    instruction = str(row.get("instruction") or "").strip()
    extra = str(row.get("input") or "").strip()
    if not instruction and not extra:
        raise DanluError(f"{where}: Alpaca row with an empty 'instruction'")
    messages: Conversation = []
    if row.get("system"):
        messages.append({"role": "system", "content": str(row["system"])})
    for turn in row.get("history") or []:
        if not isinstance(turn, (list, tuple)) or len(turn) != 2:
            raise DanluError(f"{where}: 'history' must be a list of [user, assistant] pairs")
        messages += [{"role": "user", "content": str(turn[0])}, {"role": "assistant", "content": str(turn[1])}]
    user = "\n\n".join(t for t in (instruction, extra) if t)
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": str(row["output"])}]
    return messages


def row_conversation(row: Any, where: str, summary_prompt: str = SUMMARY_PROMPT) -> Conversation:
    """One row of any accepted shape as a checked conversation."""
    if not isinstance(row, dict):
        raise DanluError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        return check_conversation(row["messages"], where)
    if "document" in row or "summary" in row:
        if not row.get("document") or "summary" not in row:
            raise DanluError(f"{where}: a summarization row needs 'document' and 'summary'")
        return [{"role": "user", "content": summary_prompt.format(document=str(row["document"]))},
                {"role": "assistant", "content": str(row["summary"])}]
    if "instruction" in row or "output" in row:
        return alpaca_conversation(row, where)
    raise DanluError(f"{where}: unknown row shape (keys: {', '.join(row) or 'none'}); expected "
                     "'messages' (chat), 'instruction'/'output' (Alpaca) or 'document'/'summary'")


def read_conversations(path: str | Path, summary_prompt: str = SUMMARY_PROMPT) -> list[Conversation]:
    """Every row of a JSON/JSONL file as a conversation; DanluError with file and line if malformed."""
    path = Path(path)
    rows = [row_conversation(row, f"{path}:{line}", summary_prompt) for row, line in _json_rows(path)]
    if not rows:
        raise DanluError(f"{path}: no rows")
    return rows


def _source_file(data: str) -> Path:
    path = Path(data).expanduser()
    if data in PACKAGED and not path.exists():
        from danlu.assets import install

        return install(data, quiet=True)
    if path.is_file():
        if not any(s in SUFFIXES for s in path.suffixes):
            raise DanluError(f"{path}: chat data must be a .json or .jsonl file")
        return path
    if path.is_dir():
        raise DanluError(f"{path} is a folder; give one .json/.jsonl file (it is split seeded)")
    raise DanluError(f"no such file or packaged chat data: {data!r}{did_you_mean(data, list(PACKAGED))}")


def seeded_split(n: int, seed: int, val_ratio: float, test_ratio: float) -> dict[str, list[int]]:
    """Indices of train/validation/test for `n` rows, shuffled by `seed` (each held-out split >= 1 row
    when its ratio is positive and there are rows to spare)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(n * test_ratio)) if test_ratio > 0 and n > 2 else 0
    n_val = max(1, round(n * val_ratio)) if val_ratio > 0 and n > 2 else 0
    return {"test": sorted(order[:n_test]), "validation": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def load_chat(data: str, seed: int = 42, val_ratio: float = 0.1, test_ratio: float = 0.1,
              max_train_examples: int = 0, summary_prompt: str = SUMMARY_PROMPT) -> ChatData:
    """DATA (a packaged name or a JSON/JSONL file) as seeded train/validation/test conversations."""
    from danlu.artifact import fingerprint_files

    path = _source_file(data)
    if data == "xsum-sample":  # the packaged XSum rows: one has an empty document, dropped (not an error)
        conversations = [row_conversation(row, f"{path}:{line}", summary_prompt) for row, line in _json_rows(path)
                         if isinstance(row, dict) and row.get("document")]
    else:
        conversations = read_conversations(path, summary_prompt)
    index = seeded_split(len(conversations), seed, val_ratio, test_ratio)
    if max_train_examples and len(index["train"]) > max_train_examples:
        index["train"] = sorted(random.Random(seed).sample(index["train"], max_train_examples))
    splits = {name: [conversations[i] for i in ids] for name, ids in index.items()}
    info = {"seed": seed, "val_ratio": val_ratio, "test_ratio": test_ratio,
            "sizes": {name: len(rows) for name, rows in splits.items()}}
    return ChatData(splits, str(data), fingerprint_files([path]), info)
