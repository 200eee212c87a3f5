"""Word resources of the attacks and of training-time augmentation, read as text and JSON only (never a pickle):
counter-fitted word vectors (Mrkšić et al. 2016; the `counter-fitted` asset), WordNet 3.0 synonyms
(Debian's `wordnet-base`, /usr/share/wordnet, parsed here from its text database), and the keyboard
neighbours of each key (the `keyboard-typos` asset, from nlpaug); and the word-level helpers both use
(stop words, keyboard typos)."""

from __future__ import annotations

import functools
import json
import os
import random
import zipfile
from pathlib import Path

import numpy as np

from danlu.errors import DanluError

WORDNET_DIRS = (os.environ.get("WNSEARCHDIR", ""), "/usr/share/wordnet")


class WordVectors:
    """Unit-normalised word vectors, and their nearest neighbours by cosine."""

    def __init__(self, words: list[str], vectors: np.ndarray):
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.words, self.vectors = words, (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        self.index = {w: i for i, w in enumerate(words)}

    def cosine(self, a: str, b: str) -> float | None:
        i, j = self.index.get(a.lower()), self.index.get(b.lower())
        return None if i is None or j is None else float(self.vectors[i] @ self.vectors[j])

    def neighbours(self, words: list[str], k: int, min_cosine: float) -> dict[str, list[str]]:
        """Up to k nearest words of each known word with cosine >= min_cosine (the word itself excluded),
        nearest first; one matrix product for all of them."""
        known = sorted({w.lower() for w in words if w.lower() in self.index})
        if not known:
            return {}
        sims = self.vectors[[self.index[w] for w in known]] @ self.vectors.T  # (known, vocab)
        top = np.argpartition(-sims, min(k + 1, sims.shape[1] - 1), axis=1)[:, :k + 1]
        out = {}
        for row, w in enumerate(known):
            order = top[row][np.argsort(-sims[row, top[row]])]
            out[w] = [self.words[j] for j in order if self.words[j] != w and sims[row, j] >= min_cosine][:k]
        return out


def _cache_dir() -> Path:
    from danlu.assets import danlu_home

    return danlu_home() / "cache" / "counter-fitted"


@functools.cache
def counter_fitted() -> WordVectors:
    """The 65,713 counter-fitted vectors (300-d). Parsed once from the zipped text and kept as a .npy
    (read with allow_pickle=False) and a word list, so later loads take a fraction of a second."""
    from danlu.assets import install

    cache = _cache_dir()
    if (cache / "vectors.npy").exists() and (cache / "words.txt").exists():
        words = (cache / "words.txt").read_text(encoding="utf-8").split("\n")
        return WordVectors(words, np.load(cache / "vectors.npy", allow_pickle=False))
    path = install("counter-fitted", quiet=True)
    words, rows = [], []
    with zipfile.ZipFile(path) as z, z.open(z.namelist()[0]) as f:
        for line in f:
            parts = line.decode("utf-8").rstrip().split(" ")
            words.append(parts[0])
            rows.append(np.asarray(parts[1:], dtype=np.float32))
    vectors = np.stack(rows)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".vectors.{os.getpid()}.npy"
    np.save(tmp, vectors, allow_pickle=False)
    (cache / "words.txt").write_text("\n".join(words), encoding="utf-8")
    os.replace(tmp, cache / "vectors.npy")
    return WordVectors(words, vectors)


def wordnet_dir() -> Path:
    for d in WORDNET_DIRS:
        if d and (Path(d) / "data.noun").exists():
            return Path(d)
    raise DanluError("WordNet is not installed: apt-get install wordnet-base (or set WNSEARCHDIR)")


# WordNet's morphology (morphy): suffix rules per part of speech, tried after the exception lists.
_SUFFIXES = {
    "noun": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
             ("ies", "y")],
    "verb": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "adj": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "adv": [],
}


class WordNet:
    """Synonyms from WordNet's text database: every lemma of every synset of the word's base forms."""

    def __init__(self, folder: Path):
        self.synsets: dict[str, set[tuple[str, int]]] = {}  # lemma -> {(pos, offset)}
        self.members: dict[tuple[str, int], list[str]] = {}
        self.exceptions: dict[str, dict[str, list[str]]] = {}
        for pos in _SUFFIXES:
            with open(folder / f"data.{pos}", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("  "):  # the licence header
                        continue
                    fields = line.split(" ")
                    offset, count = int(fields[0]), int(fields[3], 16)
                    lemmas = [fields[4 + 2 * i].lower() for i in range(count)]
                    # adjectives carry a marker like "(a)" or "(p)" after the lemma
                    lemmas = [lemma.split("(")[0] for lemma in lemmas]
                    self.members[(pos, offset)] = lemmas
                    for lemma in lemmas:
                        self.synsets.setdefault(lemma, set()).add((pos, offset))
            exc = {}
            with open(folder / f"{pos}.exc", encoding="utf-8", errors="replace") as f:
                for line in f:
                    inflected, *bases = line.split()
                    exc[inflected] = bases
            self.exceptions[pos] = exc

    def base_forms(self, word: str) -> list[str]:
        word = word.lower()
        forms = [word] if word in self.synsets else []
        for pos, rules in _SUFFIXES.items():
            forms += [b for b in self.exceptions[pos].get(word, []) if b in self.synsets]
            forms += [word[:-len(s)] + r for s, r in rules
                      if word.endswith(s) and len(word) > len(s) and word[:-len(s)] + r in self.synsets]
        return list(dict.fromkeys(forms))

    def synonyms(self, word: str) -> list[str]:
        """Single-word synonyms of `word` (multi-word lemmas and the word itself left out), sorted."""
        out = set()
        for base in self.base_forms(word):
            for key in self.synsets[base]:
                out.update(m for m in self.members[key] if "_" not in m and "-" not in m)
        out.discard(word.lower())
        return sorted(out)


@functools.cache
def wordnet() -> WordNet:
    return WordNet(wordnet_dir())


@functools.cache
def keyboard_neighbours() -> dict[str, list[str]]:
    """Each key's neighbours on an English keyboard (lower case; letters and digits)."""
    from danlu.assets import install

    path = install("keyboard-typos", quiet=True)
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    return {k.lower(): [c.lower() for c in v if c.isalnum()] for k, v in table.items()}


def stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def keyboard_typos(word: str, keyboard: dict[str, list[str]], limit: int, rng: random.Random) -> list[str]:
    """Words with one character replaced by a neighbouring key; up to `limit`, sampled."""
    out = [word[:i] + match_case(n, c) + word[i + 1:]
           for i, c in enumerate(word) for n in keyboard.get(c.lower(), [])]
    out = list(dict.fromkeys(w for w in out if w != word))
    return rng.sample(out, limit) if len(out) > limit else out
