"""Token shards: the prepared corpus as memory-mapped arrays that pretraining reads without loading.

A split is a list of shards. Each shard is three files:
- `NAME.bin`: token ids (uint16 when the vocabulary fits, else uint32), every document followed by
  the separator token;
- `NAME.documents.npy`: int64 offsets, document d is tokens [docs[d], docs[d+1] - 1) (the separator
  sits at docs[d+1] - 1);
- `NAME.sentences.npy`: int64 offset of each sentence start (next-sentence prediction pairs
  segments made of whole sentences from one document).
Documents never cross shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class ShardWriter:
    """Appends tokenized documents to `folder/SPLIT-NNNNN.bin`, starting a new shard past `shard_tokens`."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, separator: int, shard_tokens: int):
        self.folder, self.split, self.dtype, self.separator = folder, split, dtype, separator
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self._file = None

    def _open_next(self) -> None:
        self._close()
        name = f"{self.split}-{len(self.shards):05d}"
        self._file = open(self.folder / f"{name}.bin", "wb")
        self._name, self._tokens, self._docs, self._sentences = name, 0, [0], []

    def add(self, sentences: list[list[int]]) -> int:
        """Write one document given as its sentences' token ids; return its token count."""
        if self._file is None or self._tokens >= self.shard_tokens:
            self._open_next()
        for ids in sentences:
            self._sentences.append(self._tokens)
            self._file.write(np.asarray(ids, dtype=self.dtype).tobytes())
            self._tokens += len(ids)
        self._file.write(np.asarray([self.separator], dtype=self.dtype).tobytes())
        self._tokens += 1
        self._docs.append(self._tokens)
        return self._tokens - self._docs[-2]

    def _close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        np.save(self.folder / f"{self._name}.documents.npy", np.asarray(self._docs, dtype=np.int64))
        np.save(self.folder / f"{self._name}.sentences.npy", np.asarray(self._sentences, dtype=np.int64))
        self.shards.append({"tokens": f"{self._name}.bin", "documents": f"{self._name}.documents.npy",
                            "sentences": f"{self._name}.sentences.npy", "num_tokens": self._tokens,
                            "num_documents": len(self._docs) - 1})
        self._file = None

    def close(self) -> list[dict]:
        """Finish the last shard; return the shard descriptions for meta.json."""
        self._close()
        return self.shards


@dataclass
class Shard:
    tokens: np.ndarray  # (num_tokens,) memory-mapped
    documents: np.ndarray  # (num_documents + 1,) offsets
    sentences: np.ndarray  # (num_sentences,) offsets

    @property
    def num_documents(self) -> int:
        return len(self.documents) - 1

    def document_sentences(self, d: int) -> list[tuple[int, int]]:
        """(start, end) token spans of document d's sentences, the separator excluded."""
        start, end = int(self.documents[d]), int(self.documents[d + 1]) - 1
        first, last = np.searchsorted(self.sentences, [start, end])
        starts = [int(s) for s in self.sentences[first:last]]
        return [(s, e) for s, e in zip(starts, starts[1:] + [end]) if e > s]


def open_shards(folder: Path, shards: list[dict], dtype: str) -> list[Shard]:
    """Memory-map the shards of one split."""
    return [Shard(np.memmap(folder / s["tokens"], dtype=np.dtype(dtype), mode="r"),
                  np.load(folder / s["documents"]), np.load(folder / s["sentences"]))
            for s in shards if s["num_tokens"]]
