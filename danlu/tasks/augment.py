"""`danlu finetune --augment eda|typo|adversarial`: training examples changed on the fly, as wrappers around
a task's objective (the training loop sees an ordinary Objective).

- eda (Wei & Zou 2019): one of WordNet synonym replacement, random insertion of a synonym, random swap,
  random deletion, on about 10% of the words, for half of the examples drawn.
- typo: about 10% of the words (at least one) get one character replaced by a neighbouring key, for half
  of the examples drawn.
- adversarial: A2T-style (Yoo & Qi 2021) adversarial training against word substitutions. Per batch, the
  gradient of the loss with respect to the input embeddings ranks the tokens (the cheap importance of
  A2T, one backward pass instead of a query per word); the top 15% of each text's words are swapped for
  the counter-fitted neighbour (cosine >= 0.5, a whole word of the vocabulary, no stop words) that raises
  the loss most to first order; the model trains on the clean and the adversarial batch, half each.
  Chosen over FreeLB-style embedding perturbation because the attacks it must resist (TextFooler, PWWS)
  swap whole words within that same neighbourhood: A2T trains on the very perturbations they make,
  while embedding-space noise makes no word a model can meet at test time; and it costs about one extra
  forward and two backward passes per step, not a search.
Augmentation is seeded by (seed, epoch, the batch's example indices), so a resumed run sees the same
batches.
"""

from __future__ import annotations

import hashlib
import json
import math
import random

import torch

from danlu.errors import DanluError
from danlu.data.words import keyboard_typos, stop_words

AUGMENTS = ("none", "eda", "typo", "adversarial")


def eda(text: str, rng: random.Random, synonyms, stops: frozenset[str], alpha: float = 0.1) -> str:
    """One of EDA's four operations on about alpha of the words."""
    words = text.split()
    if len(words) < 2:
        return text
    n = max(1, int(alpha * len(words)))
    op = rng.randrange(4)
    if op == 0:  # synonym replacement
        positions = [i for i, w in enumerate(words) if w.lower() not in stops and synonyms(w.lower())]
        for i in rng.sample(positions, min(n, len(positions))):
            words[i] = rng.choice(synonyms(words[i].lower()))
    elif op == 1:  # random insertion of a synonym of a word
        options = [w for w in words if w.lower() not in stops and synonyms(w.lower())]
        for _ in range(n if options else 0):
            words.insert(rng.randrange(len(words) + 1), rng.choice(synonyms(rng.choice(options).lower())))
    elif op == 2:  # random swap
        for _ in range(n):
            i, j = rng.randrange(len(words)), rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
    else:  # random deletion, keeping at least one word
        kept = [w for w in words if rng.random() > alpha]
        words = kept or [rng.choice(words)]
    return " ".join(words)


def typos(text: str, rng: random.Random, keyboard: dict[str, list[str]], rate: float = 0.1) -> str:
    """About `rate` of the words (at least one) with one character replaced by a neighbouring key."""
    words = text.split(" ")
    positions = [i for i, w in enumerate(words) if any(c.isalpha() for c in w)]
    for i in rng.sample(positions, min(len(positions), max(1, round(rate * len(positions))))):
        options = keyboard_typos(words[i], keyboard, 1, rng)
        words[i] = options[0] if options else words[i]
    return " ".join(words)


class TextAugmentedObjective:
    """Wraps a classification objective: each example drawn is, with probability `prob`, replaced by an
    augmented copy of its text (tokenised here, batched as the wrapped objective batches)."""

    def __init__(self, objective, texts: list[str], label_ids: list[int], tokenizer, max_length: int,
                 augment, seed: int = 0, prob: float = 0.5):
        self.objective, self.texts, self.label_ids = objective, texts, label_ids
        self.tokenizer, self.max_length, self.augment = tokenizer, max_length, augment
        self.seed, self.prob, self.epoch = seed, prob, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.objective, "set_epoch"):
            self.objective.set_epoch(epoch)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        from danlu.tasks.classify import encode, pad

        rng = random.Random(f"{self.seed}/{self.epoch}/{','.join(map(str, indices))}")
        texts = [self.augment(self.texts[i], rng) if rng.random() < self.prob else self.texts[i] for i in indices]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = pad(encode(self.tokenizer, texts, self.max_length), pad_id)
        batch["labels"] = torch.tensor([self.label_ids[i] for i in indices])
        return batch

    def count(self, batch):
        return self.objective.count(batch)

    def loss_sum(self, model, batch):
        return self.objective.loss_sum(model, batch)


def neighbour_table(tokenizer, k: int = 20, min_cosine: float = 0.5) -> dict[int, list[int]]:
    """Token id -> ids of its counter-fitted neighbours (both whole words of the vocabulary, no stop
    words), nearest first. Cached as JSON under $DANLU_HOME, keyed by the vocabulary."""
    import numpy as np

    from danlu.assets import danlu_home
    from danlu.data.words import counter_fitted

    vocab = tokenizer.get_vocab()
    key = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]
    cache = danlu_home() / "cache" / f"neighbours-{key}-{k}-{min_cosine}.json"
    if cache.exists():
        return {int(a): b for a, b in json.loads(cache.read_text()).items()}
    vectors, stops = counter_fitted(), stop_words()
    words = sorted(w for w in vocab if w.isalpha() and w in vectors.index and w not in stops)
    matrix = vectors.vectors[[vectors.index[w] for w in words]]
    table = {}
    for start in range(0, len(words), 2048):
        sims = matrix[start:start + 2048] @ matrix.T
        for row, sim in enumerate(sims):
            top = np.argpartition(-sim, min(k + 1, len(words) - 1))[:k + 1]
            top = top[np.argsort(-sim[top])]
            ids = [vocab[words[j]] for j in top if j != start + row and sim[j] >= min_cosine][:k]
            if ids:
                table[vocab[words[start + row]]] = ids
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(table))
    return table


class AdversarialObjective:
    """A2T-style adversarial training around a classification objective (see the module docstring)."""

    def __init__(self, objective, tokenizer, rate: float = 0.15, weight: float = 0.5):
        self.objective, self.rate, self.weight = objective, rate, weight
        table = neighbour_table(tokenizer)
        width = max(len(v) for v in table.values())
        size = max(len(tokenizer), max(table) + 1)
        # (vocab, width) candidate ids, -1 where none; a token with no candidate is never swapped
        self.candidates = torch.full((size, width), -1, dtype=torch.long)
        for token, ids in table.items():
            self.candidates[token, :len(ids)] = torch.tensor(ids)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.objective, "set_epoch"):
            self.objective.set_epoch(epoch)

    def collate(self, indices):
        return self.objective.collate(indices)

    def count(self, batch):
        return self.objective.count(batch)

    def adversarial_ids(self, embedding: torch.nn.Embedding, ids: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Swap the top `rate` of each row's swappable tokens (by gradient norm) for the neighbour whose
        embedding moves along the gradient most: (e_new - e_old) . grad, largest first-order loss gain."""
        cands = self.candidates.to(ids.device)[ids]  # (batch, seq, width)
        swappable = (cands[..., 0] >= 0)
        importance = grad.norm(dim=-1).masked_fill(~swappable, -1.0)  # (batch, seq)
        adv = ids.clone()
        weight = embedding.weight
        for row in range(ids.shape[0]):
            n = int(swappable[row].sum())
            if n == 0:
                continue
            for pos in importance[row].topk(max(1, math.ceil(self.rate * n))).indices.tolist():
                options = cands[row, pos][cands[row, pos] >= 0]
                gain = (weight[options] - weight[ids[row, pos]]) @ grad[row, pos]
                if gain.max() > 0:
                    adv[row, pos] = options[gain.argmax()]
        return adv

    def loss_sum(self, model, batch):
        inner = getattr(model, "module", model)
        embedding = inner.get_input_embeddings()
        labels = batch["labels"]
        extra = {k: v for k, v in batch.items() if k not in ("labels", "input_ids")}
        embeds = embedding(batch["input_ids"])
        embeds.retain_grad() if embeds.requires_grad else embeds.requires_grad_()
        logits = model(inputs_embeds=embeds, **extra).logits
        clean = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(clean, embeds, retain_graph=True)
        with torch.no_grad():
            adv_ids = self.adversarial_ids(embedding, batch["input_ids"], grad.float())
        adv_logits = model(input_ids=adv_ids, **extra).logits
        adv = torch.nn.functional.cross_entropy(adv_logits.float(), labels, reduction="sum")
        return (1 - self.weight) * clean + self.weight * adv


def augment_objective(mode: str, task: str, objective, examples, labels: list[str], tokenizer, max_length: int,
                      seed: int = 0):
    """The objective to train with under `--augment MODE` (the objective itself for none); `examples`
    are the task's training examples ((text, label) pairs for classification)."""
    if mode not in AUGMENTS:
        raise DanluError(f"--augment must be one of {', '.join(AUGMENTS)}, got {mode!r}")
    if mode == "none":
        return objective
    if task != "classify":
        raise DanluError(f"--augment {mode} is implemented for --task classify only, not {task!r}")
    texts, label_ids = [t for t, _ in examples], [labels.index(y) for _, y in examples]
    if mode == "adversarial":
        return AdversarialObjective(objective, tokenizer)
    from danlu.data import words as resources

    if mode == "eda":
        wordnet, stops = resources.wordnet(), stop_words()
        augment = lambda text, rng: eda(text, rng, wordnet.synonyms, stops)  # noqa: E731
    else:
        keyboard = resources.keyboard_neighbours()
        augment = lambda text, rng: typos(text, rng, keyboard)  # noqa: E731
    return TextAugmentedObjective(objective, texts, label_ids, tokenizer, max_length, augment, seed)
