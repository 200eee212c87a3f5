"""Task `sft`: instruction/chat fine-tuning of a decoder (and summarization as (document, summary) chat).

Every example is rendered by the model's own chat template; the loss is on the assistant tokens only
(each assistant turn's text and its end-of-turn marker), or on every token with `loss_on="all"`. The
assistant spans are found by rendering the conversation prefix by prefix and diffing token counts,
which works for any template (SmolLM2's has no `{% generation %}` markers, so transformers'
`return_assistant_tokens_mask` cannot be used there). Served by the decoder engine through
/v1/chat/completions (ROUTE None); predict is greedy generation.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from danlu.data.chat import Conversation, check_conversation, load_chat
from danlu.errors import DanluError

NAME = "sft"
PRIMARY_METRIC = "neg_loss"  # minus the mean assistant-token loss: larger is better (not in [0, 1])
HEAD = "AutoModelForCausalLM"
PEFT_TASK_TYPE = "CAUSAL_LM"
ROUTE = None
ONNX_OUTPUTS = ("logits",)
KIND = "decoder"
OPTIONS = ("loss_on", "packing", "chat_template")  # FinetuneArgs fields, recorded in danlu.json
EVALUATE_OPTIONS = ("max_new_tokens", "samples")  # EvaluateArgs fields (not recorded)
TRAIN_METRICS = ("neg_loss", "loss", "perplexity", "token_accuracy")
IGNORE = -100
DEFAULT_MAX_NEW_TOKENS = 64


def load_data(spec):
    """spec.data (alpaca-en, alpaca-zh, or a JSON/JSONL file of chat/Alpaca/summary rows), split seeded."""
    from danlu.tasks.base import TaskData

    data = load_chat(spec.data, spec.seed, spec.val_ratio, spec.test_ratio, spec.max_train_examples)
    return TaskData(data.splits, [], data.source, data.fingerprint, data.split_info)


def build_model(model_path: Path, labels: list[str]):
    """The pretrained decoder itself (its LM head is the task head)."""
    from transformers import AutoModelForCausalLM

    if (Path(model_path) / "adapter_config.json").exists():
        raise DanluError(f"{model_path} is a LoRA artifact; merge it first with `danlu merge`")
    return AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)


def use_chat_template(tokenizer, chat_template: str = "") -> None:
    """Set the template from FILE when given; DanluError when the tokenizer has none at all."""
    if chat_template:
        path = Path(chat_template)
        if not path.is_file():
            raise DanluError(f"--chat-template: no such file: {path}")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    if not getattr(tokenizer, "chat_template", None):
        raise DanluError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} has no chat "
                         "template; give one with --chat-template FILE (a Jinja template as in "
                         "tokenizer_config.json's chat_template)")


def _ids(tokenizer, messages: Conversation, generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_conversation(tokenizer, messages: Conversation, loss_on: str = "assistant"
                        ) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and the label of each (the id, or IGNORE where no loss).

    An assistant turn's tokens are those between the rendering of the conversation before it (with the
    generation prompt) and the rendering up to and including it."""
    ids = _ids(tokenizer, messages, False)
    if loss_on == "all":
        return ids, list(ids)
    labels = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:i], True))
        upto = _ids(tokenizer, messages[:i + 1], False)
        if upto != ids[:len(upto)]:
            raise DanluError("the chat template does not render a conversation's prefix as a prefix of the "
                             "whole; assistant tokens cannot be located (use --loss-on all)")
        labels[start:len(upto)] = upto[start:]
    return ids, labels


class SFTObjective:
    """Next-token cross-entropy summed over the labelled (assistant) tokens; count = those tokens.

    With packing, an item is several examples back to back: `position_ids` restart at 0 at each
    example, and with no attention mask transformers builds a block-diagonal causal mask from them
    (masking_utils.find_packed_sequence_indices), so no token attends across examples."""

    def __init__(self, items: list[tuple[list[int], list[int], list[int]]], pad_id: int, packed: bool):
        self.items, self.pad_id, self.packed = items, pad_id, packed

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.items[i] for i in indices]
        width = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, labs, pos) in enumerate(rows):
            n = len(ids)
            input_ids[r, :n], labels[r, :n], position_ids[r, :n] = torch.tensor(ids), torch.tensor(labs), torch.tensor(pos)
            attention_mask[r, :n] = 1
            position_ids[r, n:] = torch.arange(width - n)  # padding: a segment of its own (packing)
        batch = {"input_ids": input_ids, "labels": labels}
        if self.packed:
            batch["position_ids"] = position_ids
        else:
            batch["attention_mask"] = attention_mask
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 batch["labels"][:, 1:].reshape(-1),
                                                 ignore_index=IGNORE, reduction="sum")


def encode_examples(tokenizer, examples: Sequence[Conversation], max_length: int, loss_on: str = "assistant",
                    report: bool = True) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each example, cut to max_length; the number cut is printed, never silent."""
    encoded, cut, emptied = [], 0, 0
    for messages in examples:
        ids, labels = encode_conversation(tokenizer, messages, loss_on)
        if len(ids) > max_length:
            cut += 1
            ids, labels = ids[:max_length], labels[:max_length]
            emptied += all(label == IGNORE for label in labels[1:])
        encoded.append((ids, labels))
    if cut and report:
        print(f"sft: {cut} of {len(examples)} examples were longer than --max-length {max_length} tokens and "
              f"were cut{f' ({emptied} of them kept no assistant token)' if emptied else ''}", file=sys.stderr)
    return encoded


def pack(encoded: list[tuple[list[int], list[int]]], max_length: int
         ) -> list[tuple[list[int], list[int], list[int]]]:
    """Examples back to back in items of at most max_length tokens (next-fit, in order), with
    position ids restarting at each example."""
    items: list[tuple[list[int], list[int], list[int]]] = []
    ids_, labels_, positions = [], [], []
    for ids, labels in encoded:
        if ids_ and len(ids_) + len(ids) > max_length:
            items.append((ids_, labels_, positions))
            ids_, labels_, positions = [], [], []
        ids_, labels_ = ids_ + ids, labels_ + [IGNORE] + labels[1:]  # never predict across examples
        positions = positions + list(range(len(ids)))
    if ids_:
        items.append((ids_, labels_, positions))
    return items


def make_objective(tokenizer, examples: Sequence[Conversation], labels: list[str], max_length: int,
                   loss_on: str = "assistant", packing: bool = False, chat_template: str = ""):
    """The SFT objective and the token length of each training item (an example, or a pack)."""
    if loss_on not in ("assistant", "all"):
        raise DanluError(f"--loss-on must be assistant or all, got {loss_on!r}")
    use_chat_template(tokenizer, chat_template)
    encoded = encode_examples(tokenizer, examples, max_length, loss_on)
    if packing:
        items = pack(encoded, max_length)
    else:
        items = [(ids, labs, list(range(len(ids)))) for ids, labs in encoded]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return SFTObjective(items, pad_id, packing), [len(ids) for ids, _, _ in items]


def _device(model) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device(getattr(model, "device", "cpu"))


@torch.inference_mode()
def token_loss(model, tokenizer, examples: Sequence[Conversation], max_length: int, batch_size: int = 8,
               progress: str = "") -> dict[str, float]:
    """Mean loss, perplexity and greedy next-token accuracy over the assistant tokens of `examples`."""
    from tqdm.auto import tqdm

    items = [(ids, labs, list(range(len(ids))))
             for ids, labs in encode_examples(tokenizer, examples, max_length, report=False)]
    objective = SFTObjective(items, tokenizer.pad_token_id or 0, packed=False)
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    device = _device(model)
    total, count, correct = 0.0, 0, 0
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in objective.collate(order[start:start + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        target = batch["labels"][:, 1:]
        keep = target != IGNORE
        total += float(torch.nn.functional.cross_entropy(logits[keep].float(), target[keep], reduction="sum"))
        correct += int((logits[keep].argmax(-1) == target[keep]).sum())
        count += int(keep.sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(count, 1),
            "tokens": count}


def prompt_and_reference(messages: Conversation) -> tuple[Conversation, str]:
    """The conversation up to its last assistant turn, and that turn's text."""
    return messages[:-1], messages[-1]["content"]


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[Conversation], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             max_length: int = 2048, batch_size: int = 8, progress: str = "") -> list[str]:
    """Greedy answers to each conversation (prompt tokens kept to the last max_length), in order."""
    from tqdm.auto import tqdm

    encoded = [_ids(tokenizer, list(p), True)[-max_length:] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device, answers = _device(model), [""] * len(encoded)
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=not progress, leave=False):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):  # left padding: every row's next token is at the end
            ids[r, width - len(encoded[i]):], mask[r, width - len(encoded[i]):] = torch.tensor(encoded[i]), 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                             eos_token_id=tokenizer.eos_token_id)
        for r, i in enumerate(chunk):
            answers[i] = tokenizer.decode(out[r, width:], skip_special_tokens=True).strip()
    return answers


def score(model, tokenizer, examples: Sequence[Conversation], labels: list[str], max_length: int,
          progress: str = "", max_new_tokens: int = 0, samples: int = 0, chat_template: str = "",
          **_: Any) -> dict[str, Any]:
    """Assistant-token loss, perplexity and token accuracy; with max_new_tokens > 0 also ROUGE-1/2/L of
    greedy answers to each last user turn against the reference answer, and `samples` triples."""
    use_chat_template(tokenizer, chat_template if not getattr(tokenizer, "chat_template", None) else "")
    metrics: dict[str, Any] = token_loss(model, tokenizer, examples, max_length, progress=progress)
    metrics.update(examples=len(examples), neg_loss=-metrics["loss"])
    if max_new_tokens > 0 and examples:
        from danlu.evaluate.rouge import rouge

        prompts, references = zip(*(prompt_and_reference(m) for m in examples))
        answers = generate(model, tokenizer, prompts, max_new_tokens, max_length,
                           progress=progress and f"{progress} (generating)")
        metrics.update(rouge(answers, list(references)), max_new_tokens=max_new_tokens)
        metrics["samples"] = [{"prompt": list(p), "reference": ref, "generation": ans}
                              for p, ref, ans in list(zip(prompts, references, answers))[:samples]]
    return metrics


def predict(model, tokenizer, inputs: Sequence[Any], labels: list[str], max_length: int,
            batch_size: int = 8, max_new_tokens: int = 128, progress: str = "", chat_template: str = "",
            **_: Any) -> list[dict[str, Any]]:
    """The greedy answer to each input (a conversation, or a text taken as one user turn)."""
    use_chat_template(tokenizer, chat_template if not getattr(tokenizer, "chat_template", None) else "")
    prompts = [[{"role": "user", "content": x}] if isinstance(x, str) else list(x) for x in inputs]
    return [{"generation": answer}
            for answer in generate(model, tokenizer, prompts, max_new_tokens, max_length, batch_size, progress)]


def decision(result: dict[str, Any]) -> str:
    return result["generation"]


def read_inputs(texts: list[str], input_file: str, **_: Any) -> list[Any]:
    """Texts (one user turn each), and --input FILE: a .txt of one prompt per line or chat/Alpaca rows."""
    inputs: list[Any] = list(texts)
    if input_file:
        path = Path(input_file)
        if path.suffix == ".txt":
            if not path.exists():
                raise DanluError(f"no such file: {path}")
            inputs += [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        else:
            from danlu.data.chat import read_conversations

            inputs += [prompt_and_reference(m)[0] for m in read_conversations(path)]
    if not inputs or any(isinstance(x, str) and not x.strip() for x in inputs):
        raise DanluError("give one or more non-empty prompts, or --input FILE")
    return inputs


def input_of(example: Conversation) -> Conversation:
    return prompt_and_reference(example)[0]


def format_prediction(input: Any, result: dict[str, Any]) -> str:
    prompt = input if isinstance(input, str) else input[-1]["content"]
    return f"> {prompt}\n{result['generation']}\n"


def format_metrics(metrics: dict[str, Any]) -> str:
    line = (f"{metrics.get('examples', 0)} examples, {metrics.get('tokens', 0)} assistant tokens  "
            f"loss {metrics['loss']:.4f}  perplexity {metrics['perplexity']:.3f}  "
            f"token accuracy {metrics['token_accuracy']:.4f}")
    if "rouge1" in metrics:
        line += (f"\nROUGE-1 {metrics['rouge1']:.4f}  ROUGE-2 {metrics['rouge2']:.4f}  "
                 f"ROUGE-L {metrics['rougeL']:.4f}  (greedy, {metrics['max_new_tokens']} new tokens at most)")
    for s in metrics.get("samples", []):
        line += f"\n--- prompt: {s['prompt'][-1]['content'][:200]}\n    reference: {s['reference'][:200]}" \
                f"\n    generation: {s['generation'][:200]}"
    return line


def validate_request(inputs: Any) -> list[Any]:
    """A prompt text, a conversation, or a list of those (the sft task is served by chat/completions)."""
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], dict)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise ValueError("input must be a prompt, a list of messages, or a list of those")
    out = []
    for x in inputs:
        if isinstance(x, str) and x.strip():
            out.append(x)
        elif isinstance(x, list):
            try:
                check_conversation(x + [{"role": "assistant", "content": ""}], "input")
            except DanluError as e:
                raise ValueError(str(e)) from None
            out.append(x)
        else:
            raise ValueError("each input must be a non-empty prompt or a list of messages")
    return out
