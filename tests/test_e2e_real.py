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
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert recipes
    for path in recipes:
        assert load_recipe(path)["stages"][0]["stage"] == "finetune"
