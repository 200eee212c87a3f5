"""What `danlu explain` attributes, per task: one function per task, looked up by task name in EXPLAINERS
(data, as the task registry), that turns an artifact and the command's input into a `Subject`: the
tokens the page shows and the outputs to attribute.

- classify: the probability of the predicted label (or --target).
- ner: per predicted entity, the probability of the label the model gives the entity's first token (or
  --target) at that token; a text with no predicted entity is refused (there is nothing to explain; the O
  tags are the absence of an answer, not one).
- qa: the probability of the predicted answer's start token, and of its end token (softmax over the window
  that holds the answer, as the task's own post-processing found it).
- sft / causal-lm: the probability of the greedy next token, or of each token of a greedy continuation of
  --max-new-tokens, given the tokens before it (the text is one user turn under the chat template when the
  tokenizer has one, else plain text).
"""

from __future__ import annotations

import inspect

import torch

from danlu.errors import DanluError
from danlu.explain.attribution import Subject, Target, encode_one
from danlu.runtime import Loaded, model_device


def _forward(model, batch: dict[str, torch.Tensor]):
    with torch.no_grad():
        return model(**{k: v.to(model_device(model)) for k, v in batch.items()})


def _label_index(labels: list[str], target: str, predicted: int) -> int:
    if target and target not in labels:
        raise DanluError(f"--target {target!r} is not a label of this model; labels: {', '.join(labels)}")
    return labels.index(target) if target else predicted


def _text_only(task: str, text: str, question: str, context: str) -> None:
    if question or context:
        raise DanluError(f"--question/--context are for qa models; this is a {task} model: give TEXT")


def _no_target(task: str, target: str) -> None:
    if target:
        raise DanluError(f"--target is for classifiers and token classifiers; a {task} model's attributions are "
                         "for its own prediction")


def _label_probabilities(labels: list[str], probs: torch.Tensor) -> dict[str, float]:
    return {label: round(float(p), 6) for label, p in zip(labels, probs)}


def classify_subject(model, tokenizer, labels: list[str], max_length: int, text: str, target: str = "") -> Subject:
    """A sequence classifier: the probability of the predicted label (or `target`)."""
    batch = encode_one(tokenizer, text, max_length)
    probs = torch.softmax(_forward(model, batch).logits[0].float(), dim=-1).cpu()
    predicted = int(probs.argmax())
    label = labels[_label_index(labels, target, predicted)]
    return Subject(text, batch, tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()), labels[predicted],
                   [Target(label, label, labels.index(label), batch, -1, _label_probabilities(labels, probs))])


def explain_classify(loaded: Loaded, text: str, target: str = "", question: str = "", context: str = "",
                     **_) -> Subject:
    _text_only(loaded.task, text, question, context)
    return classify_subject(loaded.model, loaded.tokenizer, loaded.labels, loaded.max_length, text, target)


def explain_ner(loaded: Loaded, text: str, target: str = "", question: str = "", context: str = "",
                **_) -> Subject:
    """A token classifier: per entity the task predicts, its first token's label (or `target`)."""
    from danlu.tasks.ner import predict

    _text_only(loaded.task, text, question, context)
    model, tok, labels = loaded.model, loaded.tokenizer, loaded.labels
    batch = encode_one(tok, text, loaded.max_length)
    offsets = tok(text, truncation=True, max_length=loaded.max_length, return_offsets_mapping=True)["offset_mapping"]
    found = predict(model, tok, [text], labels, loaded.max_length)[0]["entities"]
    if not found:
        raise DanluError("nothing to explain: the model finds no entity in this text (explain attributes each "
                         "predicted entity's label at its first token)")
    if target:
        _label_index(labels, target, 0)
    probs = torch.softmax(_forward(model, batch).logits[0].float(), dim=-1).cpu()  # (seq, labels)
    targets = []
    for entity in found:
        position = next((i for i, (s, e) in enumerate(offsets) if e > s and s == entity["start"]), None)
        if position is None:  # beyond the first max_length tokens
            continue
        label = labels[_label_index(labels, target, int(probs[position].argmax()))]
        score = (lambda out, p=position, k=labels.index(label): torch.softmax(out.logits[:, p].float(), dim=-1)[:, k])
        targets.append(Target(f"{entity['type']}: {entity['text']}", label, score, batch, position,
                              _label_probabilities(labels, probs[position])))
    if not targets:
        raise DanluError(f"nothing to explain: every entity lies beyond the first {loaded.max_length} tokens")
    return Subject(text, batch, tok.convert_ids_to_tokens(batch["input_ids"][0].tolist()),
                   "; ".join(f"{e['type']}: {e['text']}" for e in found), targets)


def _top(probs: torch.Tensor, names, k: int = 5) -> dict[str, float]:
    top = probs.topk(min(k, probs.shape[-1]))
    return {names(int(i)): round(float(p), 6) for p, i in zip(top.values, top.indices)}


def explain_qa(loaded: Loaded, text: str = "", target: str = "", question: str = "", context: str = "",
               **_) -> Subject:
    """A QA model: the start and the end of the answer the task predicts, in the window that holds it."""
    from danlu.tasks import get_task, task_options

    if text or not question.strip() or not context.strip():
        raise DanluError("a qa model is explained with --question Q --context C (and no TEXT)")
    _no_target("qa", target)
    qa = get_task("qa")
    options = task_options(qa, loaded.manifest.args)
    example = qa.QAExample("0", question, context)
    features = qa.prepare_validation_features(loaded.tokenizer, [example], loaded.max_length,
                                              options.get("doc_stride", 0))
    logits = qa.window_logits(loaded.model, loaded.tokenizer, features)
    answer = qa.best_answers([example], features, logits, options.get("max_answer_length", qa.MAX_ANSWER_LENGTH))[0]
    if not answer.text:
        raise DanluError("nothing to explain: the model finds no answer span in the context")
    for feature, (start_logits, end_logits) in zip(features, logits):
        offsets = feature["offset_mapping"]
        starts = [i for i, o in enumerate(offsets) if o is not None and o[0] == answer.start]
        ends = [i for i, o in enumerate(offsets) if o is not None and o[1] == answer.end]
        if starts and ends:
            break
    batch = {k: torch.tensor([feature[k]]) for k in ("input_ids", "token_type_ids") if k in feature}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    tokens = loaded.tokenizer.convert_ids_to_tokens(feature["input_ids"])
    names = lambda i: f"{tokens[i]} @{i}"  # noqa: E731
    targets = []
    for side, position, window in (("start", starts[0], start_logits), ("end", ends[-1], end_logits)):
        score = (lambda out, p=position, s=side: torch.softmax(getattr(out, f"{s}_logits").float(), dim=-1)[:, p])
        targets.append(Target(f"answer {side}: {tokens[position]!r}", f"answer {side} at {tokens[position]!r}",
                              score, batch, position, _top(torch.softmax(torch.as_tensor(window), dim=-1), names)))
    return Subject(f"{question}\n{context}", batch, tokens, answer.text, targets)


def _prompt_ids(tokenizer, text: str) -> list[int]:
    """The text as one user turn under the chat template when the tokenizer has one, else the plain text."""
    special = set(tokenizer.all_special_ids)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not text.strip() or not any(i not in special for i in ids):  # byte-level BPE keeps spaces as tokens
        raise DanluError(f"the text {text[:60]!r} tokenizes to nothing (no tokens besides special ones)")
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def explain_decoder(loaded: Loaded, text: str, target: str = "", question: str = "", context: str = "",
                    max_new_tokens: int = 1, **_) -> Subject:
    """A decoder: each token of a greedy continuation of `max_new_tokens` (1: the next token), given the
    tokens before it."""
    _text_only(loaded.task, text, question, context)
    _no_target(loaded.task, target)
    model, tok = loaded.model, loaded.tokenizer
    prompt = _prompt_ids(tok, text)[-loaded.max_length:]
    ids = torch.tensor([prompt], device=model_device(model))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id)
    new = out[0, len(prompt):].tolist()
    full = prompt + new
    batch = {"input_ids": torch.tensor([full]), "attention_mask": torch.ones(1, len(full), dtype=torch.long)}
    logits = _forward(model, batch).logits[0].float().cpu()  # (seq, vocab)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    names = lambda i: repr(tok.decode([i]))  # noqa: E731
    targets = []
    for k, token in enumerate(new):
        at = len(prompt) + k
        prefix = {"input_ids": torch.tensor([full[:at]]), "attention_mask": torch.ones(1, at, dtype=torch.long)}
        score = (lambda o, t=token: torch.softmax(o.logits[:, -1].float(), dim=-1)[:, t])
        targets.append(Target(f"token {k + 1}: {names(token)}", f"next token {names(token)}", score, prefix, at,
                              _top(torch.softmax(logits[at - 1], dim=-1), names), keep))
    return Subject(text, batch, [tok.decode([i]) for i in full], tok.decode(new, skip_special_tokens=True), targets)


# task name -> its explainer: (loaded, text, target=, question=, context=, max_new_tokens=) -> Subject
EXPLAINERS = {
    "classify": explain_classify,
    "ner": explain_ner,
    "qa": explain_qa,
    "sft": explain_decoder,
    "causal-lm": explain_decoder,
}


def explain_input(loaded: Loaded, **request) -> Subject:
    """The subject of `danlu explain` for the artifact's task; a task explain does not handle is refused."""
    if loaded.task not in EXPLAINERS:
        raise DanluError(f"danlu explain does not handle {loaded.task!r} models; it explains "
                         f"{', '.join(EXPLAINERS)} artifacts")
    return EXPLAINERS[loaded.task](loaded, **request)
