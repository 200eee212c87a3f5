"""Training examples from prepared token shards: packed windows (MLM, CLM) and sentence-pair
chunks (MLM + NSP). An example is an index; what it holds is computed when it is batched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from danlu.data.prepare import FORMAT
from danlu.data.shards import Shard, open_shards
from danlu.errors import DanluError


@dataclass
class Prepared:
    """A folder made by `danlu prepare`: its tokenizer, meta, stats and memory-mapped shards."""

    path: Path
    meta: dict
    stats: dict
    splits: dict[str, list[Shard]]

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    def special(self, name: str) -> int | None:
        return self.meta["special_ids"].get(name)

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path / "tokenizer"))

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256((self.path / "meta.json").read_bytes()
                              + (self.path / "stats.json").read_bytes()).hexdigest()


def load_prepared(path: str | Path) -> Prepared:
    path = Path(path).expanduser()
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise DanluError(f"--data {path}: not a prepared corpus (no meta.json); make one with `danlu prepare`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise DanluError(f"--data {path}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    stats = json.loads((path / "stats.json").read_text(encoding="utf-8"))
    splits = {split: open_shards(path, shards, meta["dtype"]) for split, shards in meta["splits"].items()}
    return Prepared(path, meta, stats, splits)


class PackedWindows:
    """Consecutive `width`-token windows of each shard's token stream (documents joined by separators)."""

    def __init__(self, shards: list[Shard], width: int):
        self.shards, self.width = shards, width
        counts = [len(s.tokens) // width for s in shards]
        self.offsets = np.cumsum([0] + counts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def tokens(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        start = (index - int(self.offsets[shard])) * self.width
        return np.asarray(self.shards[shard].tokens[start:start + self.width], dtype=np.int64)


class SentenceChunks:
    """BERT's pretraining instances: runs of whole sentences of one document, up to `budget` tokens.

    Each chunk is later cut into segment A (its first sentences) and segment B: the rest of the chunk
    (the true next segment) or, half the time, sentences from another document.
    """

    def __init__(self, shards: list[Shard], budget: int):
        self.shards, self.budget = shards, budget
        self.spans: list[list[tuple[int, int]]] = []
        self.where: list[tuple[int, int]] = []  # (shard, document) of each chunk
        for s, shard in enumerate(shards):
            for d in range(shard.num_documents):
                chunk, size = [], 0
                for start, end in shard.document_sentences(d):
                    chunk.append((start, end))
                    size += end - start
                    # At least two sentences, so that the true next segment exists (as often as the random one).
                    if size >= budget and len(chunk) >= 2:
                        self._add(chunk, s, d)
                        chunk, size = [], 0
                if len(chunk) == 1 and self.where and self.where[-1] == (s, d):
                    self.spans[-1].extend(chunk)  # a lone last sentence joins the chunk before it
                elif chunk:
                    self._add(chunk, s, d)
        self.lengths = [min(budget, sum(e - b for b, e in spans)) + 3 for spans in self.spans]
        self.doc_starts = [i for i in range(len(self.where)) if i == 0 or self.where[i] != self.where[i - 1]]

    def _add(self, chunk: list[tuple[int, int]], shard: int, document: int) -> None:
        self.spans.append(chunk)
        self.where.append((shard, document))

    def __len__(self) -> int:
        return len(self.spans)

    def sentence_tokens(self, chunk: int, spans: list[tuple[int, int]]) -> np.ndarray:
        tokens = self.shards[self.where[chunk][0]].tokens
        return np.concatenate([np.asarray(tokens[b:e], dtype=np.int64) for b, e in spans]) if spans else \
            np.zeros(0, dtype=np.int64)

    def pair(self, chunk: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """(segment A, segment B, is_random_next) for a chunk, drawn with `rng` (50% true next)."""
        spans = self.spans[chunk]
        cut = int(rng.integers(1, len(spans))) if len(spans) > 1 else 1
        a = self.sentence_tokens(chunk, spans[:cut])
        other = None
        if len(spans) == 1 or rng.random() < 0.5:
            other = self._random_other(chunk, rng)
        if other is None:
            b, is_random = self.sentence_tokens(chunk, spans[cut:]), 0
        else:
            b, is_random = other, 1
        return _truncate_pair(a, b, self.budget, rng) + (is_random,)

    def _random_other(self, chunk: int, rng: np.random.Generator) -> np.ndarray | None:
        """Sentences from a random chunk of another document (None when there is no other document)."""
        if len(self.doc_starts) < 2:
            return None
        for _ in range(10):
            other = int(rng.integers(0, len(self.spans)))
            if self.where[other] != self.where[chunk]:
                spans = self.spans[other]
                start = int(rng.integers(0, len(spans)))
                return self.sentence_tokens(other, spans[start:])
        return None


def _truncate_pair(a: np.ndarray, b: np.ndarray, budget: int, rng: np.random.Generator):
    """Trim the longer segment, from its front or back at random, until both fit (BERT's rule, which
    removes one token at a time from the longer one; here in steps, with the same result lengths)."""
    while len(a) + len(b) > budget:
        excess = len(a) + len(b) - budget
        a_longer = len(a) >= len(b)
        longer, shorter = (a, b) if a_longer else (b, a)
        cut = max(1, min(excess, len(longer) - len(shorter)))
        if len(longer) <= cut:
            break
        trimmed = longer[cut:] if rng.random() < 0.5 else longer[:-cut]
        a, b = (trimmed, b) if a_longer else (a, trimmed)
    return a, b
