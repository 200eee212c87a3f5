"""The real packaged MiniLM on the real Rotten Tomatoes reviews, for a few dozen steps."""

import json

import pytest

from danlu.cli import main
from danlu.recipe import RECIPES, load_recipe


@pytest.mark.e2e
def test_minilm_rotten_tomatoes_learns(tmp_path):
    out = tmp_path / "rt"
    code = main(["finetune", "--model", "minilm-l6", "--data", "rotten-tomatoes", "--out", str(out),
                 "--max-steps", "40", "--batch-size", "32", "--lr", "1e-4", "--bf16", "--eval-every", "40",
                 "--max-length", "64"])
    assert code == 0
    manifest = json.loads((out / "danlu.json").read_text())
    assert manifest["metrics"]["test"]["examples"] == 1281
    assert manifest["metrics"]["test"]["accuracy"] > 0.6  # well above the 0.578 majority class


def test_every_recipe_loads():
    from danlu.config import field_names, from_dict
    from danlu.recipe import stage_table

    recipes = sorted(RECIPES.glob("*.yaml"))
    assert {p.name for p in recipes} >= {"quickstart.yaml", "pretrain-tiny.yaml", "chinese-sentiment.yaml"}
    table = stage_table()
    for path in recipes:
        for stage in load_recipe(path)["stages"]:
            cls, _ = table[stage["stage"]]
            values = {k: v for k, v in stage.items() if k not in {"stage", "name"}}
            if "out" in field_names(cls):
                values.setdefault("out", "somewhere")
            from_dict(cls, values)  # every key is known and every value passes the stage's checks
