"""`--report-to tensorboard|mlflow`, read back with each tool's own reader."""

import json
import sys

import pytest

from danlu.cli import main


def curve(artifact) -> list[dict]:
    return [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_hold_the_curve(tracked_classifier):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_classifier / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/examples_per_second", "train/epoch",
            "eval/accuracy", "eval/macro_f1", "eval/loss", "test/accuracy", "test/macro_f1"} <= scalars
    history = curve(tracked_classifier)
    for tag, key in [("train/loss", "loss"), ("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm"),
                     ("eval/accuracy", "eval_accuracy")]:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expected = [(e["step"], e[key]) for e in history if key in e]
        assert [s for s, _ in logged] == [s for s, _ in expected], tag
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    assert all(e.value > 0 for e in events.Scalars("train/examples_per_second"))
    manifest = json.loads((tracked_classifier / "danlu.json").read_text())
    (final,) = events.Scalars("test/accuracy")
    assert final.value == pytest.approx(manifest["metrics"]["test"]["accuracy"])
    assert final.step == manifest["metrics"]["steps"]
    assert "lr" in events.Tensors("arguments/text_summary")[0].tensor_proto.string_val[0].decode()


def test_mlflow_run_has_params_curve_final_metrics_and_the_artifact(tracked_classifier):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + str(tracked_classifier.parent / "mlflow.db"))
    experiment = client.get_experiment_by_name("danlu")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "clf" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["lr"] == "0.003" and params["batch_size"] == "16" and len(params["data_fingerprint"]) == 64
    history = curve(tracked_classifier)
    losses = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert [s for s, _ in losses] == [e["step"] for e in history if "loss" in e]
    assert [v for _, v in losses] == pytest.approx([e["loss"] for e in history if "loss" in e])
    evals = client.get_metric_history(run.info.run_id, "eval/accuracy")
    assert sorted(m.step for m in evals) == [e["step"] for e in history if "eval_accuracy" in e]
    manifest = json.loads((tracked_classifier / "danlu.json").read_text())
    assert run.data.metrics["test/accuracy"] == pytest.approx(manifest["metrics"]["test"]["accuracy"])
    assert run.data.tags["danlu.task"] == "classify" and run.data.tags["danlu.stage"] == "finetune"
    files = {f.path for f in client.list_artifacts(run.info.run_id, "artifact")}
    assert {"artifact/danlu.json", "artifact/model.safetensors", "artifact/report.html"} <= files


@pytest.mark.parametrize("tracker, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_without_the_extra_the_flag_says_what_to_install(tracker, module, tiny_bert, sentiment_csv, tmp_path,
                                                         monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    out = tmp_path / "clf"
    assert main(["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--out", str(out),
                 "--max-steps", "1", "--report-to", tracker]) == 2
    error = capsys.readouterr().err
    assert f"--report-to {tracker} needs the Python package {module}" in error
    assert "pip install 'danlu[tracking]'" in error
    assert not out.exists() and not tmp_path.joinpath("clf.run").exists()


def test_unknown_tracker_is_refused(tiny_bert, sentiment_csv, tmp_path, capsys):
    assert main(["finetune", "--model", str(tiny_bert), "--data", str(sentiment_csv), "--out", str(tmp_path / "o"),
                 "--report-to", "wandb"]) == 2
    assert "--report-to must be one of tensorboard, mlflow, got 'wandb'" in capsys.readouterr().err


def test_a_recipe_may_name_one_tracker_as_a_string():
    from danlu.config import TrainArgs

    assert TrainArgs(report_to="tensorboard").report_to == ["tensorboard"]


def test_a_resumed_run_continues_the_same_mlflow_run_and_tensorboard_curve(tmp_path):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from danlu.train.tracking import default_mlflow_uri, start_tracking

    run_dir = tmp_path / "clf.run"
    run_dir.mkdir()
    first = start_tracking(["tensorboard", "mlflow"], run_dir, "", {"lr": 0.1}, resumed_at=None)
    for step in (1, 2, 3):  # the run is killed after step 3; its last checkpoint was at step 2
        first.log(step, {"loss": 1.0 / step, "step": step})
    first.close("KILLED")
    again = start_tracking(["tensorboard", "mlflow"], run_dir, "", {"lr": 0.1, "log_every": 5}, resumed_at=2)
    for step in (3, 4):
        again.log(step, {"loss": 10.0 / step, "eval_accuracy": 0.5})
    again.close("FINISHED")

    client = MlflowClient(tracking_uri=default_mlflow_uri(run_dir))
    (run,) = client.search_runs([client.get_experiment_by_name("danlu").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1", "log_every": "5"}
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert [s for s, _ in history] == [1, 2, 3, 3, 4]  # MLflow keeps every value it was given
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    # TensorBoard drops the killed run's steps after the checkpoint (purge_step): one curve
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, 3.333), (4, 2.5)]
