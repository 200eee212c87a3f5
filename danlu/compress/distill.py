"""Knowledge distillation into a shallower student (DistilBERT's recipe, Sanh et al. 2019).

The student keeps every (n/k)-th layer of the n-layer teacher (DistilBERT: every other one), with the
teacher's embeddings and head, and is trained on the training split with
    soft_weight * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - soft_weight) * CE(labels)
and optionally `hidden_weight` * (1 - cos) between each student layer's output and the teacher
layer it was copied from. Teacher logits are computed once up front (no dropout in the teacher, so
they do not change between epochs); hidden states, when matched, are computed per batch.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from danlu.compress.job import CompressJob, NotApplicable
from danlu.compress.training import classification_features, run_training
from danlu.compress.variant import encoder_layers, load_parent, write_variant
from danlu.tasks.classify import pad


class DistillationObjective:
    """Soft targets at a temperature + hard labels (+ optional hidden-state cosine), one term per example."""

    def __init__(self, features: list[dict], label_ids: list[int], teacher_logits: torch.Tensor, pad_id: int,
                 temperature: float, soft_weight: float, hidden_weight: float = 0.0,
                 teacher: torch.nn.Module | None = None, layer_map: list[int] | None = None):
        self.features, self.label_ids, self.teacher_logits = features, label_ids, teacher_logits
        self.pad_id, self.temperature, self.soft_weight = pad_id, temperature, soft_weight
        self.hidden_weight, self.teacher, self.layer_map = hidden_weight, teacher, layer_map or []

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = pad([self.features[i] for i in indices], self.pad_id)
        batch["labels"] = torch.tensor([self.label_ids[i] for i in indices])
        batch["teacher_logits"] = self.teacher_logits[indices]
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["labels"])

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}
        matching = self.hidden_weight > 0 and self.teacher is not None
        out = model(**inputs, output_hidden_states=matching)
        logits, t = out.logits.float(), self.temperature
        soft = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(batch["teacher_logits"].float() / t, -1),
                        reduction="sum", log_target=True) * t * t
        hard = F.cross_entropy(logits, batch["labels"], reduction="sum")
        loss = self.soft_weight * soft + (1 - self.soft_weight) * hard
        if matching:
            with torch.no_grad():
                teacher_hidden = self.teacher(**inputs, output_hidden_states=True).hidden_states
            mask = inputs["attention_mask"].float()  # (batch, seq): padding does not count
            cosine = 0.0
            for student_index, teacher_index in enumerate(self.layer_map):
                s, h = out.hidden_states[student_index + 1].float(), teacher_hidden[teacher_index + 1].float()
                per_token = 1 - F.cosine_similarity(s, h, dim=-1)  # (batch, seq)
                cosine = cosine + ((per_token * mask).sum(1) / mask.sum(1)).sum()
            loss = loss + self.hidden_weight * cosine / len(self.layer_map)
        return loss


@torch.inference_mode()
def teacher_logits(teacher: torch.nn.Module, features: list[dict], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """The teacher's logits for every training example, (n, num_labels), in `features` order."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    logits = torch.empty((len(features), teacher.config.num_labels))
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        logits[ids] = teacher(**pad([features[i] for i in ids], pad_id)).logits.float()
    return logits


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher layer initialises each student layer: evenly spaced from the first (6 -> 3: 0, 2, 4)."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def make_student(teacher: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A copy of the teacher keeping only the given encoder layers (embeddings and head shared in value)."""
    student = copy.deepcopy(teacher)
    kept = encoder_layers(student)
    encoder = getattr(student, student.base_model_prefix).encoder
    encoder.layer = torch.nn.ModuleList([kept[i] for i in layers])
    for index, layer in enumerate(encoder.layer):  # caches and masks look layers up by position
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    student.config.num_hidden_layers = len(layers)
    return student


def train_student(job: CompressJob, student: torch.nn.Module, teacher: torch.nn.Module, tokenizer,
                  mapping: list[int]) -> dict:
    """Distil `teacher` into `student` on the training split (the loop of danlu/train/loop.py)."""
    options = job.options
    features, label_ids = classification_features(job, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    objective = DistillationObjective(features, label_ids, teacher_logits(teacher, features, pad_id), pad_id,
                                      options.get("temperature", 2.0), options.get("soft_weight", 0.5),
                                      options.get("hidden_weight", 0.0), teacher.eval(), mapping)
    return run_training(student, objective, [len(f["input_ids"]) for f in features], job, "distill")


def distill(job: CompressJob) -> Path:
    """A student with `distill_layers` layers initialised from the teacher's, distilled on the training data."""
    job.require_task("classify", method="distill")
    teacher, tokenizer = load_parent(job)
    n = len(encoder_layers(teacher))
    k = job.options.get("distill_layers", 3)
    if k >= n:
        raise NotApplicable(f"the teacher has {n} layers; --distill-layers {k} would not make it smaller")
    mapping = layer_map(n, k)
    student = make_student(teacher, mapping)
    training = train_student(job, student, teacher, tokenizer, mapping)
    info = {"teacher_layers": n, "student_layers": k, "layer_map": mapping, "training": training,
            "parameters": sum(p.numel() for p in student.parameters())}
    return write_variant(job, "distill", lambda folder: student.save_pretrained(str(folder)), info=info,
                         notes=f"{k}-layer student from teacher layers {mapping}, soft targets at T="
                               f"{job.options.get('temperature', 2.0)} + hard labels")
