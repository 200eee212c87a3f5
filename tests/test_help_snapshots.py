"""`danlu --help` and every `danlu COMMAND --help` match their committed snapshots.

A change to a flag, its default or its help text shows up here as a diff to review. To accept it:
    DANLU_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_help_snapshots.py
"""

import os
from pathlib import Path

import pytest

from danlu.cli import COMMANDS, main

SNAPSHOTS = Path(__file__).parent / "snapshots" / "help"


def help_text(argv, monkeypatch, capsys) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal width
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["danlu", *COMMANDS])
def test_help_matches_snapshot(command, monkeypatch, capsys):
    text = help_text([] if command == "danlu" else [command], monkeypatch, capsys)
    path = SNAPSHOTS / f"{command}.txt"
    if os.environ.get("DANLU_UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}; create it with DANLU_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text()


def test_every_flag_is_explained():
    from danlu.cli import build_parser

    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help and action.help.split(" (default")[0].strip(), f"{name} {action.dest}"
