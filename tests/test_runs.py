"""`danlu runs DIR`: the artifacts under a folder, newest first."""

import json
import shutil

from danlu.artifact import write_manifest
from danlu.cli import main


def made(folder, created, **fields):
    folder.mkdir(parents=True)
    manifest = write_manifest(folder, **fields)
    manifest["created"] = created
    (folder / "danlu.json").write_text(json.dumps(manifest))


def test_runs_lists_artifacts_newest_first(tracked_classifier, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(tracked_classifier, root / "week1" / "clf")
    made(root / "week1" / "bert", "2026-11-20T09:00:00+0000", task="mlm", stage="pretrain", args={},
         metrics={"validation": {"loss": 6.3612, "perplexity": 579.3}})
    made(root / "ner", "2026-11-21T09:00:00+0000", task="ner", stage="finetune", args={}, parent=str(root / "week1" / "bert"),
         metrics={"test": {"f1": 0.6123, "accuracy": 0.94}}, primary_metric="f1")
    made(root / "search" / "variants" / "int8-dynamic", "2026-11-22T09:00:00+0000", task="classify", stage="compress",
         args={}, method="int8-dynamic", metrics={"compress": {"accuracy": 0.8361}})
    made(root / "clf.run" / "best", "2026-11-23T09:00:00+0000", task="classify", stage="finetune", args={})  # a run folder
    made(root / ".clf.tmp-x", "2026-11-23T09:00:00+0000", task="classify", stage="finetune", args={})  # being written

    assert main(["runs", str(root), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == ["week1/clf", "search/variants/int8-dynamic", "ner", "week1/bert"]
    accuracy = json.loads((tracked_classifier / "danlu.json").read_text())["metrics"]["test"]["accuracy"]
    assert (rows[0]["task"], rows[0]["stage"], rows[0]["metric"], rows[0]["value"]) == (
        "classify", "finetune", "accuracy", accuracy)
    assert (rows[1]["method"], rows[1]["metric"], rows[1]["value"]) == ("int8-dynamic", "accuracy", 0.8361)
    assert (rows[2]["metric"], rows[2]["value"], rows[2]["parent"]) == ("F1", 0.6123, str(root / "week1" / "bert"))
    assert (rows[3]["metric"], rows[3]["value"]) == ("validation loss", 6.3612)
    assert rows[2]["created"].startswith("2026-11-21")

    assert main(["runs", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["created", "task", "stage", "metric", "path", "parent"]
    assert "ner" in lines[3] and "F1 0.6123" in lines[3] and lines[3].rstrip().endswith("week1/bert")
    assert "compress (int8-dynamic)" in lines[2]


def test_runs_on_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert f"no such folder: {tmp_path / 'nope'}" in capsys.readouterr().err
    assert main(["runs", str(tmp_path)]) == 0
    assert "no artifacts" in capsys.readouterr().out
