"""Cross-layer parameter sharing (ALBERT, Lan et al. 2019) for a student.

The student keeps the teacher's depth but only `share_groups` distinct layers: the n layers are cut into
that many consecutive groups and every layer of a group is one module (ALBERT shares one layer across
all: `--share-groups 1`). Each shared layer starts from the teacher layer in the middle of its group,
and the student is distilled from the teacher (distill.py). The file stores each shared layer once,
so it is smaller; the compute per token is the teacher's, so expect no speedup.
"""

from __future__ import annotations

import copy
from pathlib import Path

from danlu.compress.distill import train_student
from danlu.compress.job import CompressJob, NotApplicable
from danlu.compress.variant import encoder_layers, load_parent, tie_layers, write_variant


def share_groups(layers: int, groups: int) -> list[list[int]]:
    """`layers` indices cut into `groups` consecutive runs of (nearly) equal length."""
    bounds = [round(g * layers / groups) for g in range(groups + 1)]
    return [list(range(bounds[g], bounds[g + 1])) for g in range(groups)]


def share_layers(job: CompressJob) -> Path:
    """An ALBERT-style student: groups of layers share one set of weights; distilled from the parent."""
    from safetensors.torch import save_model

    job.require_task("classify", method="share-layers")
    teacher, tokenizer = load_parent(job)
    n = len(encoder_layers(teacher))
    groups_wanted = job.options.get("share_groups", 1)
    if groups_wanted >= n:
        raise NotApplicable(f"the model has {n} layers; --share-groups {groups_wanted} would share nothing")
    groups = share_groups(n, groups_wanted)
    student = copy.deepcopy(teacher)
    layers = encoder_layers(student)
    for group in groups:  # the group's middle teacher layer becomes its shared layer
        layers[group[0]] = layers[group[len(group) // 2]]
    tie_layers(student, groups)
    # Each student layer matches the teacher layer at its own depth.
    training = train_student(job, student, teacher, tokenizer, list(range(n)))
    unique = sum(p.numel() for p in student.parameters())  # parameters() yields a shared tensor once

    def save(folder: Path) -> None:
        student.config.save_pretrained(str(folder))
        save_model(student, str(folder / "model.safetensors"), metadata={"format": "pt"})

    info = {"groups": groups, "unique_parameters": unique, "training": training}
    return write_variant(job, "share-layers", save, load={"shared_layers": groups}, info=info,
                         notes=f"{n} layers sharing {len(groups)} distinct weight sets {groups}; same compute "
                               "per token as the teacher, fewer bytes")
