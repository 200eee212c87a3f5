import pytest

from danlu.cli import build_parser, main
from danlu.config import TrainArgs, from_dict
from danlu.errors import DanluError
from danlu.finetune.args import FinetuneArgs


def test_validation_names_the_flag():
    with pytest.raises(DanluError, match=r"--warmup-ratio must be in \[0, 1\), got 1.5"):
        TrainArgs(warmup_ratio=1.5)
    with pytest.raises(DanluError, match="--batch-size .* multiple of --grad-accum"):
        TrainArgs(batch_size=10, grad_accum=3)


def test_recipe_keys_are_the_flags():
    args = from_dict(FinetuneArgs, {"model": "m", "data": "d", "out": "o", "lr": 0.001, "batch-size": 8})
    assert args.train.lr == 0.001 and args.train.batch_size == 8 and args.out == "o"
    with pytest.raises(DanluError, match="unknown key 'learning_rate'"):
        from_dict(FinetuneArgs, {"model": "m", "data": "d", "out": "o", "learning_rate": 1})


def test_finetune_help_lists_the_contract_flags(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    for flag in ["--model", "--data", "--task", "--out", "--text-column", "--label-column", "--epochs",
                 "--max-steps", "--lr", "--batch-size", "--grad-accum", "--warmup-ratio", "--weight-decay",
                 "--max-grad-norm", "--bf16", "--seed", "--eval-every", "--early-stopping-patience",
                 "--save-every", "--lora", "--lora-r", "--lora-alpha", "--resume"]:
        assert flag in text, flag
    assert "(default: 5e-05)" in text


def test_every_command_has_help():
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert {"assets", "finetune", "merge", "predict", "evaluate", "run"} <= names


def test_bad_flag_value_exits_2(capsys):
    assert main(["finetune", "--model", "x", "--data", "y", "--out", "z", "--lr", "-1"]) == 2
    assert "--lr must be > 0, got -1.0" in capsys.readouterr().err
