"""Pretraining objectives in the shape of danlu.train.loop.Objective: collate / count / loss_sum.

Randomness (which tokens are masked, which pairs are random) is drawn from a generator seeded by
(seed, epoch, example index), never from global state: a resumed run, a run split over N processes
and a run with gradient accumulation all see the same masks for the same example.
The count is the number of predicted tokens, so accumulation and data parallelism divide by the
true global count.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from danlu.pretrain.data import PackedWindows, SentenceChunks

IGNORE = -100


class Masker:
    """BERT's masking: `prob` of the maskable tokens are predicted; of those 80% become [MASK],
    10% a random token, 10% stay as they are."""

    def __init__(self, vocab_size: int, special_ids: list[int], mask_id: int, prob: float):
        self.mask_id, self.prob = mask_id, prob
        self.special = np.zeros(vocab_size, dtype=bool)
        self.special[[i for i in special_ids if i is not None and i < vocab_size]] = True
        self.normal_ids = np.flatnonzero(~self.special)

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        candidates = np.flatnonzero(~self.special[ids])
        labels = np.full(len(ids), IGNORE, dtype=np.int64)
        if not len(candidates):
            return ids, labels
        count = max(1, int(round(self.prob * len(candidates))))
        chosen = rng.choice(candidates, size=count, replace=False)
        labels[chosen] = ids[chosen]
        ids = ids.copy()
        action = rng.random(count)
        ids[chosen[action < 0.8]] = self.mask_id
        randomised = chosen[(action >= 0.8) & (action < 0.9)]
        ids[randomised] = self.normal_ids[rng.integers(0, len(self.normal_ids), size=len(randomised))]
        return ids, labels


class _Seeded:
    def __init__(self, seed: int):
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop at each epoch: an example gets new masks each epoch (dynamic masking)."""
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])


def _pad(rows: list[np.ndarray], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


class MaskedLM(_Seeded):
    """Masked LM on packed windows: [CLS] window [SEP], `seq_len` tokens, no padding."""

    def __init__(self, windows: PackedWindows, masker: Masker, cls_id: int, sep_id: int, seed: int):
        super().__init__(seed)
        self.windows, self.masker, self.cls_id, self.sep_id = windows, masker, cls_id, sep_id

    def __len__(self) -> int:
        return len(self.windows)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        inputs, labels = [], []
        for index in indices:
            ids = np.concatenate([[self.cls_id], self.windows.tokens(index), [self.sep_id]])
            masked, target = self.masker(ids, self.rng(index))
            inputs.append(masked)
            labels.append(target)
        return {"input_ids": torch.from_numpy(np.stack(inputs)), "labels": torch.from_numpy(np.stack(labels))}

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch)["loss_sum"]


class MaskedLMWithNSP(_Seeded):
    """Masked LM + next-sentence prediction on sentence pairs: [CLS] A [SEP] B [SEP], 50% B random.

    BERT adds the mean MLM loss and the mean NSP loss. To keep the loss a sum over predicted tokens
    (exact under accumulation and data parallelism), the NSP term of each example is weighted by the
    expected number of masked tokens per example, so the two terms keep BERT's balance.
    """

    def __init__(self, chunks: SentenceChunks, masker: Masker, cls_id: int, sep_id: int, pad_id: int,
                 seed: int):
        super().__init__(seed)
        self.chunks, self.masker = chunks, masker
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.nsp_weight = masker.prob * chunks.budget

    def __len__(self) -> int:
        return len(self.chunks)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        inputs, labels, types, nsp = [], [], [], []
        for index in indices:
            rng = self.rng(index)
            a, b, is_random = self.chunks.pair(index, rng)
            ids = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]])
            masked, target = self.masker(ids, rng)
            inputs.append(masked)
            labels.append(target)
            types.append(np.concatenate([np.zeros(len(a) + 2, dtype=np.int64), np.ones(len(b) + 1, dtype=np.int64)]))
            nsp.append(is_random)
        input_ids = _pad(inputs, self.pad_id)
        return {"input_ids": input_ids, "attention_mask": _pad([np.ones(len(r), dtype=np.int64) for r in inputs], 0),
                "token_type_ids": _pad(types, 0), "labels": _pad(labels, IGNORE),
                "next_sentence_label": torch.tensor(nsp)}

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch)["loss_sum"]


class CausalLM(_Seeded):
    """Next-token prediction on packed windows of `seq_len` tokens (documents joined by end-of-text)."""

    def __init__(self, windows: PackedWindows, seed: int):
        super().__init__(seed)
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(np.stack([self.windows.tokens(i) for i in indices]))}

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        ids = batch["input_ids"]
        return ids.shape[0] * (ids.shape[1] - 1)

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch)["loss_sum"]


class PretrainingModel(torch.nn.Module):
    """A Hugging Face model with its pretraining loss as `forward`, returning loss sums.

    The loss lives in `forward` so that DistributedDataParallel (which hooks `forward`) sees the whole
    computation. For MLM the vocabulary projection is applied only to the masked positions (15%), not
    to every position as BertForMaskedLM.forward does: most of the head's matmul and softmax is saved.
    """

    def __init__(self, model: torch.nn.Module, objective: str, nsp_weight: float = 0.0):
        super().__init__()
        self.model, self.objective, self.nsp_weight = model, objective, nsp_weight

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.objective == "clm":
            logits = self.model(input_ids=input_ids).logits[:, :-1]  # (batch, seq - 1, vocab)
            clm = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1),
                                  reduction="sum")
            return {"loss_sum": clm, "clm": clm}
        output = self.model.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        masked = labels != IGNORE
        hidden = output.last_hidden_state[masked]  # (masked tokens, hidden)
        logits = self.model.cls.predictions(hidden)  # (masked tokens, vocab)
        mlm = F.cross_entropy(logits.float(), labels[masked], reduction="sum")
        if self.objective == "mlm":
            return {"loss_sum": mlm, "mlm": mlm}
        nsp_logits = self.model.cls.seq_relationship(output.pooler_output).float()  # (batch, 2)
        nsp = F.cross_entropy(nsp_logits, next_sentence_label, reduction="sum")
        return {"loss_sum": mlm + self.nsp_weight * nsp, "mlm": mlm, "nsp": nsp,
                "nsp_correct": (nsp_logits.argmax(-1) == next_sentence_label).sum()}
