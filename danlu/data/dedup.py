"""Duplicate removal: exact (hash of the normalised text) and near (MinHash LSH from `datasketch`)."""

from __future__ import annotations

import hashlib
import re

_WORD = re.compile(r"\w+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def shingles(text: str, size: int = 5) -> set[bytes]:
    """Word n-grams (character n-grams for text that is mostly CJK, which has no spaces)."""
    lowered = text.lower()
    if len(_CJK.findall(lowered)) > len(lowered) / 4:
        units = [c for c in lowered if not c.isspace()]
    else:
        units = _WORD.findall(lowered)
    if len(units) <= size:
        return {" ".join(units).encode()}
    return {" ".join(units[i:i + size]).encode() for i in range(len(units) - size + 1)}


class Deduplicator:
    """Says whether a document duplicates one seen before (`mode` is exact, near or none)."""

    def __init__(self, mode: str, threshold: float = 0.8, num_perm: int = 128, seed: int = 1):
        self.mode, self.threshold, self.num_perm, self.seed = mode, threshold, num_perm, seed
        self.hashes: set[bytes] = set()
        self.exact = self.near = 0
        self.lsh = None
        if mode == "near":
            from datasketch import MinHashLSH

            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.seen = 0

    def is_duplicate(self, text: str) -> bool:
        """True (and counted) when `text` repeats an earlier document; otherwise remember it."""
        if self.mode == "none":
            return False
        key = hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).digest()
        if key in self.hashes:
            self.exact += 1
            return True
        self.hashes.add(key)
        if self.lsh is not None:
            from datasketch import MinHash

            minhash = MinHash(num_perm=self.num_perm, seed=self.seed)
            minhash.update_batch(list(shingles(text)))
            if self.lsh.query(minhash):
                self.near += 1
                return True
            self.lsh.insert(str(self.seen), minhash)
        self.seen += 1
        return False


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of two documents' shingles (what MinHash estimates)."""
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / max(1, len(sa | sb))

