"""`danlu run`: chain stages from a YAML recipe (saved arguments, never logic).

A recipe is `{name, out, stages: [{stage: NAME, name: ID, ...arguments}]}`. A stage's `out` defaults
to `<recipe out>/<ID>`; an argument written `$ID` is replaced by stage ID's output folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from danlu.config import arg, from_dict
from danlu.errors import DanluError

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class RunArgs:
    """Run the stages of a YAML recipe; with no recipe, the built-in quickstart."""

    recipe: str = arg("", "a recipe YAML file (default: the quickstart on packaged assets)", positional=True)
    out: str = arg("", "output folder (default: the recipe's `out`)")
    overwrite: bool = arg(False, "replace the artifacts of an earlier run of the recipe (passed to every stage)")


def stage_table():
    from danlu.commands import EvaluateArgs, evaluate
    from danlu.finetune.args import FinetuneArgs

    def finetune(args):
        from danlu.finetune.run import finetune as finetune_model

        return finetune_model(args)

    def prepare(args):
        from danlu.data.prepare import prepare as prepare_corpus

        return prepare_corpus(args)

    def pretrain(args):
        from danlu.pretrain.run import pretrain as pretrain_model

        return pretrain_model(args)

    def merge(args):
        from danlu.finetune.run import merge_lora

        return merge_lora(args.artifact, args.out)

    def attack(args):
        from danlu.robust.run import attack as attack_model

        return attack_model(args)

    from danlu.data.prepare import PrepareArgs
    from danlu.finetune.args import MergeArgs
    from danlu.pretrain.args import PretrainArgs
    from danlu.robust.args import AttackArgs

    return {"prepare": (PrepareArgs, prepare), "pretrain": (PretrainArgs, pretrain),
            "finetune": (FinetuneArgs, finetune), "merge": (MergeArgs, merge),
            "evaluate": (EvaluateArgs, evaluate),
            "attack": (AttackArgs, attack)}


def load_recipe(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.exists():
        raise DanluError(f"no such recipe: {path}")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DanluError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages"), list) or not recipe["stages"]:
        raise DanluError(f"{path}: a recipe needs a non-empty `stages` list")
    table = stage_table()
    for i, stage in enumerate(recipe["stages"], 1):
        if not isinstance(stage, dict) or stage.get("stage") not in table:
            raise DanluError(f"{path}: stage {i}: `stage` must be one of {', '.join(table)}")
    return recipe


def run(args: RunArgs) -> dict:
    """Run each stage in order; return {stage id: output} and print where the artifacts are."""
    path = Path(args.recipe) if args.recipe else RECIPES / "quickstart.yaml"
    recipe = load_recipe(path)
    out = Path(args.out or recipe.get("out") or f"runs/{path.stem}")
    table = stage_table()
    outputs: dict[str, str] = {}
    results = {}
    for i, stage in enumerate(recipe["stages"], 1):
        values = {k: v for k, v in stage.items() if k not in {"stage", "name"}}
        sid = stage.get("name", f"{stage['stage']}{i}")
        values = {k: outputs.get(v[1:], v) if isinstance(v, str) and v.startswith("$") else v
                  for k, v in values.items()}
        cls, fn = table[stage["stage"]]
        if "out" in [f for f in cls.__dataclass_fields__] and "out" not in values:
            values["out"] = str(out / sid)
        if "overwrite" in cls.__dataclass_fields__ and args.overwrite:
            values.setdefault("overwrite", True)
        print(f"== stage {i}/{len(recipe['stages'])}: {stage['stage']} ({sid})")
        results[sid] = fn(from_dict(cls, values, where=f"{path}: stage {i}: "))
        outputs[sid] = str(values.get("out", ""))
    print("== done")
    for sid, folder in outputs.items():
        if folder:
            print(f"{sid}: {folder}")
    for sid, result in results.items():
        if isinstance(result, dict) and result.get("primary_metric") in result:
            metric = result["primary_metric"]
            extra = f", macro-F1 {result['macro_f1']:.4f}" if "macro_f1" in result else ""
            print(f"{sid}: {result['split']} {metric} {result[metric]:.4f}{extra}")
    return results
