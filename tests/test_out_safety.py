"""--out never deletes what danlu did not make (issue 19, finding 6), for every command that writes one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from danlu.artifact import OWNED, atomic_dir, remove_stale_temps
from danlu.cli import main
from danlu.errors import DanluError


def users_folder(path: Path) -> Path:
    """A folder of the user's, with a file danlu must never delete."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    return path


def refused(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error: "), err
    return err.splitlines()[-1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_dir_refuses_a_users_folder_and_needs_overwrite_for_an_artifact(tmp_path):
    mine = users_folder(tmp_path / "mine")
    with pytest.raises(DanluError, match=r"mine is a non-empty folder that danlu did not make \(no danlu.json\)"):
        with atomic_dir(mine) as tmp:
            (tmp / "danlu.json").write_text("{}")
    assert (mine / "thesis.tex").read_text() == "three years of work"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left either

    artifact = tmp_path / "artifact"
    with atomic_dir(artifact) as tmp:
        (tmp / "danlu.json").write_text('{"n": 1}')
    assert not (artifact / ".danlu-temp").exists()
    with pytest.raises(DanluError, match="already holds a danlu artifact; pass --overwrite"):
        with atomic_dir(artifact) as tmp:
            pass
    with atomic_dir(artifact, overwrite=True) as tmp:
        (tmp / "danlu.json").write_text('{"n": 2}')
    assert json.loads((artifact / "danlu.json").read_text()) == {"n": 2}
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:  # an empty folder holds nothing to lose
        (tmp / "danlu.json").write_text("{}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DanluError, match="exists and is not a folder"):
        with atomic_dir(tmp_path / "file", overwrite=True):
            pass


def test_stale_temporary_folders_of_a_killed_run_are_cleaned_and_nothing_else(tmp_path):
    target = tmp_path / "out"
    stale = tmp_path / ".out.tmp-abc123"
    stale.mkdir()
    (stale / ".danlu-temp").write_text(f"{dead_pid()}\n")
    (stale / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / ".out.tmp-def456"  # a run still writing (this very process)
    alive.mkdir()
    (alive / ".danlu-temp").write_text("1\n")
    lookalike = users_folder(tmp_path / ".out.tmp-mine")  # named like ours, but not marked
    with atomic_dir(target) as tmp:
        (tmp / "danlu.json").write_text("{}")
    assert not stale.exists() and alive.exists() and (lookalike / "thesis.tex").exists()
    assert remove_stale_temps(target) == []


@pytest.fixture(scope="module")
def classifier(tiny_bert, sentiment_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "clf"
    assert main(["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--out", str(out),
                 "--max-steps", "2", "--batch-size", "16"]) == 0
    return out


def test_finetune_refuses_a_users_out_and_run_folder_and_overwrites_only_when_asked(
        classifier, tiny_bert, sentiment_csv, tmp_path, capsys):
    base = ["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--max-steps", "2",
            "--batch-size", "16"]
    mine = users_folder(tmp_path / "mine")
    err = refused([*base, "--out", str(mine)], capsys)
    assert f"--out {mine} is a non-empty folder that danlu did not make" in err
    assert (mine / "thesis.tex").exists()
    run = users_folder(tmp_path / "new.run")
    err = refused([*base, "--out", str(tmp_path / "new")], capsys)
    assert f"the run folder {run} is a non-empty folder that danlu did not make" in err
    assert (run / "thesis.tex").exists() and not (tmp_path / "new").exists()

    out = tmp_path / "again"
    assert main([*base, "--out", str(out)]) == 0
    assert not out.with_name("again.run").exists()
    first = (out / "danlu.json").stat().st_mtime_ns
    err = refused([*base, "--out", str(out)], capsys)
    assert f"--out {out} already holds a danlu artifact; pass --overwrite to replace it" in err
    assert (out / "danlu.json").stat().st_mtime_ns == first
    assert main([*base, "--out", str(out), "--overwrite"]) == 0
    assert (out / "danlu.json").stat().st_mtime_ns != first


def test_export_refuses_a_users_folder_and_needs_overwrite_for_an_artifact(classifier, tmp_path, capsys):
    mine = users_folder(tmp_path / "mine")
    assert "did not make" in refused(["export", str(classifier), "--out", str(mine)], capsys)
    assert (mine / "thesis.tex").exists()
    err = refused(["export", str(classifier), "--out", str(classifier), "--parity-samples", "4"], capsys)
    assert "already holds a danlu artifact; pass --overwrite" in err
    assert (classifier / "model.safetensors").exists()


def test_prepare_and_pretrain_refuse_a_users_folder(prepared, tmp_path, capsys):
    sample = str(Path(__file__).parent / "assets" / "en_sample.txt")
    mine = users_folder(tmp_path / "mine")
    assert "did not make" in refused(["prepare", sample, "--out", str(mine), "--vocab-size", "600",
                                      "--seq-len", "32"], capsys)
    assert "already holds a danlu artifact" in refused(["prepare", sample, "--out", str(prepared)], capsys)
    assert (mine / "thesis.tex").exists() and (prepared / "danlu.json").exists()
    assert "did not make" in refused(["pretrain", "--data", str(prepared), "--out", str(mine)], capsys)
    run = users_folder(tmp_path / "lm.run")
    err = refused(["pretrain", "--data", str(prepared), "--out", str(tmp_path / "lm"), "--seq-len", "32",
                   "--max-steps", "1"], capsys)
    assert f"the run folder {run} is a non-empty folder that danlu did not make" in err
    assert (run / "thesis.tex").exists()


def test_compress_keeps_a_users_logs_and_an_earlier_search_needs_overwrite(classifier, sentiment_csv, tmp_path,
                                                                          capsys):
    mine = users_folder(tmp_path / "mine")
    (mine / "logs").mkdir()
    (mine / "logs" / "notes.txt").write_text("mine")
    argv = ["compress", str(classifier), "--eval-data", str(sentiment_csv), "--methods", "bf16", "--repeats", "1",
            "--latency-samples", "1", "--throughput-batches", "1"]
    assert "did not make" in refused([*argv, "--out", str(mine)], capsys)
    assert (mine / "logs" / "notes.txt").read_text() == "mine"
    out = tmp_path / "search"
    assert main([*argv, "--out", str(out)]) == 0
    assert (out / OWNED).exists() and (out / "results.json").exists()
    err = refused([*argv, "--out", str(out)], capsys)
    assert "holds the results of an earlier run; pass --overwrite" in err
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
