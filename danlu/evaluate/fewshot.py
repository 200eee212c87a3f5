"""Zero-, one- and few-shot classification with a decoder: no training, no free generation.

Each test text is scored by the log-likelihood of each label word after a prompt of k demonstrations
drawn (seeded) from the train split:

    Classify each text as good or bad.          <- instruction (names the label words)
                                                <- (blank line)
    Text: <demonstration>                       <- k demonstrations, the same for every test text
    Answer: good
                                                <- (blank line)
    Text: <test text>
    Answer: ⟨label word⟩                        <- scored: sum of its tokens' log-probabilities

The shared part (instruction and demonstrations) is run once and its KV cache reused by every batch.
The predicted label is the one whose word is likeliest; accuracy and macro-F1 are computed as for a
fine-tuned classifier (danlu.tasks.classify.classification_metrics), so the two read side by side.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from danlu.errors import DanluError
from danlu.tasks.classify import classification_metrics


@dataclass
class FewShotPrompt:
    """The pieces of the prompt (plain text; the model's chat template is not used)."""

    instruction: str = "Classify each text as {choices}.\n\n"
    demonstration: str = "Text: {text}\nAnswer: {answer}\n\n"
    query: str = "Text: {text}\nAnswer:"  # the label word follows, after a space


def parse_label_words(spec: str, labels: list[str]) -> dict[str, str]:
    """`fresh=good,rotten=bad` -> {label: word}; labels not named keep their own name as the word."""
    words = {label: label for label in labels}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        label, sep, word = part.partition("=")
        if not sep or not word.strip():
            raise DanluError(f"--label-words: expected LABEL=WORD pairs separated by commas, got {part!r}")
        if label.strip() not in words:
            raise DanluError(f"--label-words: unknown label {label.strip()!r}; labels: {', '.join(labels)}")
        words[label.strip()] = word.strip()
    if len(set(words.values())) != len(words):
        raise DanluError(f"--label-words: two labels share a word ({words})")
    return words


def demonstrations(texts: Sequence[str], labels: Sequence[str], k: int, seed: int) -> list[tuple[str, str]]:
    """k (text, label) pairs drawn from the train split with `seed` (the same for every test text)."""
    if k > len(texts):
        raise DanluError(f"--shots {k}: the train split has only {len(texts)} examples")
    picked = random.Random(seed).sample(range(len(texts)), k)
    return [(texts[i], labels[i]) for i in picked]


def _device(model) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _prefix_cache(model, prefix_ids: list[int], batch: int):
    """A KV cache of the shared prefix, repeated for `batch` rows (run once, copied per batch)."""
    from transformers import DynamicCache

    out = model(input_ids=torch.tensor([prefix_ids], device=_device(model)), use_cache=True)
    layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def fresh(rows: int) -> DynamicCache:
        cache = DynamicCache(config=model.config)
        for i, (k, v) in enumerate(layers):
            cache.update(k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous(), i)
        return cache

    return fresh, out.logits[0, -1]


@torch.inference_mode()
def label_log_likelihoods(model, tokenizer, prefix: str, queries: Sequence[str], words: Sequence[str],
                          batch_size: int = 16, progress: str = "") -> torch.Tensor:
    """(queries, words) sums of log P(word tokens | prefix + query + " "), one forward pass of the prefix."""
    from tqdm.auto import tqdm

    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    word_ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    single = all(len(w) == 1 for w in word_ids)  # then one row per query reads every word at its end
    rows = [(q, None) for q in range(len(queries))] if single else \
        [(q, w) for q in range(len(queries)) for w in range(len(words))]
    query_ids = [tokenizer(q, add_special_tokens=False)["input_ids"] for q in queries]
    device = _device(model)
    fresh_cache, _ = _prefix_cache(model, prefix_ids, 1) if prefix_ids else (None, None)
    scores = torch.zeros(len(queries), len(words))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in tqdm(range(0, len(rows), batch_size), desc=progress, disable=not progress, leave=False):
        chunk = rows[start:start + batch_size]
        seqs = [query_ids[q] + (word_ids[w] if w is not None else []) for q, w in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), len(prefix_ids) + width), dtype=torch.long)
        mask[:, :len(prefix_ids)] = 1
        for r, s in enumerate(seqs):  # right padding: the prefix positions stay aligned
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, len(prefix_ids):len(prefix_ids) + len(s)] = 1
        kwargs = {"past_key_values": fresh_cache(len(seqs))} if fresh_cache else {}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=bool(kwargs),
                       **kwargs).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1).cpu()  # (rows, width, vocab)
        for r, (q, w) in enumerate(chunk):
            end = len(query_ids[q])  # logits at position t predict token t + 1
            if w is None:
                scores[q] = logprobs[r, end - 1, [ids_[0] for ids_ in word_ids]]
            else:
                targets = torch.tensor(word_ids[w])
                scores[q, w] = logprobs[r, end - 1 + torch.arange(len(targets)), targets].sum()
    return scores


def fewshot_scores(model, tokenizer, texts: Sequence[str], true: Sequence[str], train_texts: Sequence[str],
                   train_labels: Sequence[str], labels: list[str], shots: Sequence[int],
                   label_words: dict[str, str] | None = None, seed: int = 42, batch_size: int = 16,
                   prompt: FewShotPrompt | None = None, progress: str = "") -> dict[int, dict]:
    """For each k in `shots`: the metrics of a fine-tuned classifier (accuracy, macro-F1, per class,
    confusion matrix, loss over the label words' softmax) of k-shot prompting on `texts`."""
    prompt = prompt or FewShotPrompt()
    words = label_words or {label: label for label in labels}
    choices = " or ".join(words[label] for label in labels)
    results = {}
    for k in shots:
        demos = demonstrations(train_texts, train_labels, k, seed)
        prefix = prompt.instruction.format(choices=choices) + "".join(
            prompt.demonstration.format(text=_one_line(t), answer=words[y]) for t, y in demos)
        queries = [prompt.query.format(text=_one_line(t)) for t in texts]
        scores = label_log_likelihoods(model, tokenizer, prefix, queries, [words[label] for label in labels],
                                       batch_size, progress=progress and f"{progress} k={k}")
        predicted = [labels[i] for i in scores.argmax(-1).tolist()]
        metrics = classification_metrics(list(true), predicted, labels)
        gold = torch.tensor([labels.index(t) for t in true])
        metrics["loss"] = float(torch.nn.functional.cross_entropy(scores, gold))
        metrics.update(shots=k, label_words=words, prompt_example=prefix + queries[0] + " " + words[labels[0]])
        results[k] = metrics
    return results


def _columns(examples) -> tuple[list[str], list[str]]:
    return [text for text, _ in examples], [label for _, label in examples]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_fewshot(results: dict[int, dict], split: str = "test") -> str:
    """One table per k, exactly as `danlu evaluate` prints a fine-tuned classifier's metrics."""
    from danlu.tasks.classify import format_metrics

    return "\n".join(format_metrics({**m, "split": f"{k}-shot {split}"}) for k, m in results.items())


def parse_shots(spec: str) -> list[int]:
    """`0,1,5` -> [0, 1, 5]."""
    try:
        shots = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        shots = [-1]
    if not shots or any(k < 0 for k in shots):
        raise DanluError(f"--shots: expected numbers >= 0 separated by commas, got {spec!r}")
    return shots


def evaluate_fewshot(model_name: str, data: str, shots: str, label_words: str = "", split: str = "test",
                     seed: int = 42, max_examples: int = 0, quiet: bool = False) -> dict:
    """`danlu evaluate MODEL --task classify --data DATA --shots 0,1,5`: k-shot prompting of a decoder
    on a classification data set (split seeded as for fine-tuning); metrics per k."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.assets import resolve_model
    from danlu.tasks import get_task
    from danlu.tasks.base import DataSpec

    ks = parse_shots(shots)
    loaded = get_task("classify").load_data(DataSpec(data, seed))
    words = parse_label_words(label_words, loaded.labels)
    path = resolve_model(model_name)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    (texts, true), (train_texts, train_labels) = (_columns(loaded.splits[split]), _columns(loaded.splits["train"]))
    if max_examples and len(texts) > max_examples:
        picked = sorted(random.Random(seed).sample(range(len(texts)), max_examples))
        texts, true = [texts[i] for i in picked], [true[i] for i in picked]
    results = fewshot_scores(model, tokenizer, texts, true, train_texts, train_labels, loaded.labels, ks,
                             words, seed, progress="" if quiet else "scoring")
    if not quiet:
        print(format_fewshot(results, split))
    return {"model": str(path), "data": data, "split": split, "shots": {str(k): m for k, m in results.items()}}
