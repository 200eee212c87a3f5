"""Attack recipes: which words may change, how they rank, and what they may become.

All four are greedy searches over a word-importance ranking, as in TextAttack (Morris et al. 2020):
- textfooler (Jin et al. 2020): rank by the drop when a word is deleted; swap with the nearest
  counter-fitted neighbours (cosine >= --min-cosine). TextFooler's sentence-encoder and part-of-speech
  checks need a TF-Hub model and a tagger download: left out (offline), here and in the benchmark's TextAttack.
- pwws (Ren et al. 2019): rank by probability-weighted word saliency (softmax of the [UNK]-replacement
  drop times the best synonym's drop); swap with WordNet synonyms.
- deepwordbug (Gao et al. 2018): rank by the [UNK]-replacement drop; one random character swap of a
  neighbour, substitution, deletion and insertion per word.
- typo: rank by the [UNK]-replacement drop; replace one character by a neighbouring key (nlpaug's map).
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

from danlu.data.words import keyboard_typos, match_case
from danlu.errors import DanluError

WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
RECIPES = ("textfooler", "pwws", "deepwordbug", "typo")


@dataclass(frozen=True)
class Constraints:
    """What every recipe respects (stated in the report)."""

    keep_stop_words: bool = True
    max_words_changed: float = 0.2  # fraction of the words; at least one word may change
    min_cosine: float = 0.5  # counter-fitted cosine between a word and its substitute (word swaps)
    candidates: int = 50  # substitutes tried per word

    def describe(self, recipe: str) -> list[str]:
        lines = ["stop words are never changed" if self.keep_stop_words else "stop words may change",
                 f"at most {self.max_words_changed:.0%} of the words are changed (rounded up)",
                 "a word is changed at most once", f"at most {self.candidates} substitutes are tried per word"]
        if recipe in ("textfooler", "pwws"):
            lines.append(f"a substitute's counter-fitted embedding cosine with the word is >= {self.min_cosine}"
                         + (" (where both are in the vocabulary)" if recipe == "pwws" else ""))
        return lines


def check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise DanluError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of `text` (letters and digits, with inner apostrophes and hyphens)."""
    return [m.span() for m in WORD.finditer(text)]


def char_edits(word: str, rng: random.Random) -> list[str]:
    """DeepWordBug's four edits, one random position each: swap two neighbouring characters, substitute,
    delete, insert a random letter."""
    if len(word) < 2:
        return []
    letters = string.ascii_lowercase
    out = []
    i = rng.randrange(len(word) - 1)
    out.append(word[:i] + word[i + 1] + word[i] + word[i + 2:])
    i = rng.randrange(len(word))
    out.append(word[:i] + rng.choice(letters.replace(word[i].lower(), "")) + word[i + 1:])
    i = rng.randrange(len(word))
    out.append(word[:i] + word[i + 1:])
    i = rng.randrange(len(word) + 1)
    out.append(word[:i] + rng.choice(letters) + word[i:])
    return [w for w in dict.fromkeys(out) if w != word and w]


class Substitutes:
    """The candidates for each word under a recipe (looked up once per word, cached)."""

    def __init__(self, recipe: str, constraints: Constraints, seed: int = 0):
        from danlu.data import words as resources

        check_recipe(recipe)
        self.recipe, self.constraints, self.rng = recipe, constraints, random.Random(seed)
        self.vectors = resources.counter_fitted() if recipe in ("textfooler", "pwws") else None
        self.wordnet = resources.wordnet() if recipe == "pwws" else None
        self.keyboard = resources.keyboard_neighbours() if recipe == "typo" else None
        self.cache: dict[str, list[str]] = {}

    def prepare(self, words: list[str]) -> None:
        """Look up many words at once (one matrix product for the embedding neighbours)."""
        if self.recipe == "textfooler":
            todo = [w for w in words if w not in self.cache]
            found = self.vectors.neighbours(todo, self.constraints.candidates, self.constraints.min_cosine)
            for w in todo:
                self.cache[w] = [match_case(n, w) for n in found.get(w.lower(), [])]

    def __call__(self, word: str) -> list[str]:
        if word in self.cache and self.recipe in ("textfooler", "pwws"):
            return self.cache[word]
        c = self.constraints
        if self.recipe == "textfooler":
            self.prepare([word])
            return self.cache[word]
        if self.recipe == "pwws":
            out = []
            for s in self.wordnet.synonyms(word):
                cos = self.vectors.cosine(word, s)
                if cos is None or cos >= c.min_cosine:
                    out.append(match_case(s, word))
            self.cache[word] = out[:c.candidates]
            return self.cache[word]
        if self.recipe == "deepwordbug":
            return char_edits(word, self.rng)
        return keyboard_typos(word, self.keyboard, c.candidates, self.rng)
