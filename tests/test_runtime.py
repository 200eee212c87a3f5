"""danlu/runtime: what a folder holds is decided in one place, the same for every stage."""

import json

import pytest
import torch

from danlu.artifact import Manifest, write_manifest
from danlu.errors import DanluError


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory, tiny_llama):
    """A GPT2LMHeadModel folder (architecture *LMHeadModel, not *ForCausalLM), as `pretrain --arch gpt2` makes."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128)
                    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_task_of_reads_the_manifest_then_the_head(tiny_bert, tiny_llama, tiny_gpt2, tmp_path):
    from transformers import AutoModel

    from danlu.runtime import is_decoder, task_of

    assert task_of(tiny_bert) == "classify" and not is_decoder(tiny_bert)
    assert task_of(tiny_llama) == "causal-lm" and is_decoder(tiny_llama)
    assert task_of(tiny_gpt2) == "causal-lm" and is_decoder(tiny_gpt2)  # compress refused this one before
    bare = tmp_path / "bare"
    AutoModel.from_pretrained(str(tiny_bert)).save_pretrained(bare)
    assert task_of(bare) == "embed"
    write_manifest(bare, task="clm", stage="pretrain", args={})  # older artifacts wrote clm
    assert task_of(bare) == "causal-lm"


def test_load_gives_task_labels_and_refuses_another_task(tiny_bert):
    from danlu.runtime import load

    loaded = load(str(tiny_bert), device="cpu")
    assert loaded.task == "classify" and loaded.labels == ["LABEL_0", "LABEL_1"] and loaded.max_length == 128
    assert not loaded.model.training
    with pytest.raises(DanluError, match="is a 'classify' model, not 'ner'"):
        load(str(tiny_bert), device="cpu", task="ner")


def test_a_gpt2_decoder_is_served_and_compressed_as_a_decoder(tiny_gpt2):
    from danlu.serve.loading import load_decoder

    model, tokenizer = load_decoder(tiny_gpt2, torch.float32, torch.device("cpu"))
    ids = tokenizer("The river", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_manifest_is_typed_and_keeps_unknown_keys(tmp_path):
    write_manifest(tmp_path, task="ner", stage="finetune", args={"max_length": 64}, labels=["O", "B-PER"],
                   primary_metric="f1", data={"source": "conll2003", "split": {}}, onnx={"opset": 17})
    manifest = Manifest.read(tmp_path)
    assert manifest.exists and manifest.task == "ner" and manifest.primary_metric == "f1"
    assert manifest.args["max_length"] == 64 and manifest.data_source == "conll2003"
    assert manifest.extra == {"onnx": {"opset": 17}} and manifest.load == {}
    assert not Manifest.read(tmp_path / "nothing").exists


def test_unknown_task_names_the_known_ones(capsys):
    from danlu.cli import main
    from danlu.tasks import get_task

    with pytest.raises(DanluError, match="unknown task 'nerr'.*did you mean 'ner'"):
        get_task("nerr")
    assert main(["finetune", "--model", "m", "--data", "d", "--out", "o", "--task", "summarise"]) == 2
    assert "--task must be one of classify" in capsys.readouterr().err
