"""`--report-to tensorboard|mlflow`: the training curve sent to the trackers people already use.

The loop builds one `Tracker` from plain values (`start_tracking`) and hands it every entry it writes
to metrics.jsonl; the stage that writes the artifact calls `finish_tracking` inside its atomic folder,
which copies the TensorBoard event files into the artifact and logs the final metrics and the artifact
folder to MLflow. Both libraries are optional (`pip install 'danlu[tracking]'`), imported only here.

Names follow the HF Trainer's: `train/loss`, `train/learning_rate`, `train/grad_norm`,
`train/examples_per_second`, `eval/<metric>`; final metrics keep their path in danlu.json
(`test/accuracy`, `best_validation/accuracy`, `steps`).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

STATE = "tracking.json"        # in the run folder: where the event files are, which MLflow run (for --resume)
TENSORBOARD = "tensorboard"    # folder name, in the run folder while training and in the artifact after
EXPERIMENT = "danlu"
TRAIN_NAMES = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
               "epoch": "train/epoch", "examples_per_second": "train/examples_per_second"}


def metric_name(key: str) -> str | None:
    """The tracker's name of a metrics.jsonl key (None for `step`)."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_"):]
    return TRAIN_NAMES.get(key)


class Tracker(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None:
        """Log the numbers of one metrics.jsonl entry at `step`."""

    def close(self, status: str) -> None:
        """End the run: FINISHED, FAILED or KILLED."""


class NoTracker:
    def log(self, step: int, values: dict[str, float]) -> None:
        pass

    def close(self, status: str) -> None:
        pass


class TensorBoardTracker:
    """Event files through torch's SummaryWriter; a resumed run purges the steps after its checkpoint."""

    def __init__(self, log_dir: Path, params: dict[str, Any], resumed_at: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=resumed_at + 1 if resumed_at is not None else None)
        if resumed_at is None:
            rows = "\n".join(f"| {k} | {v} |" for k, v in flat_params(params).items())
            self.writer.add_text("arguments", "| argument | value |\n|---|---|\n" + rows, 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run per training (kept across --resume): parameters once, metrics at each step."""

    def __init__(self, uri: str, run_name: str, params: dict[str, Any], run_id: str | None,
                 artifact_location: str | None):
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = (experiment.experiment_id if experiment else
                             self.client.create_experiment(EXPERIMENT, artifact_location=artifact_location))
            run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        logged = self.client.get_run(run_id).data.params
        log_params(self.client, run_id, {k: v for k, v in flat_params(params).items() if k not in logged})

    def log(self, step: int, values: dict[str, float]) -> None:
        log_metrics(self.client, self.run_id, values, step)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class Trackers:
    """Several trackers as one."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, step: int, values: dict[str, float]) -> None:
        named = {metric_name(k): float(v) for k, v in values.items()
                 if metric_name(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(step, named)

    def close(self, status: str) -> None:
        for tracker in self.trackers:
            tracker.close(status)


def default_mlflow_uri(run_dir: Path) -> str:
    """A SQLite database beside the artifact (OUT.run's folder), shared by the runs written there."""
    return "sqlite:///" + (run_dir.parent.absolute() / "mlflow.db").as_posix()


def start_tracking(report_to: list[str], run_dir: Path, mlflow_uri: str, params: dict[str, Any],
                   resumed_at: int | None) -> Trackers:
    """The trackers named by --report-to for a run in `run_dir` (resumed at a step, or fresh: None)."""
    if not report_to:
        return Trackers([])
    quiet_tracker_logs()
    state_path = run_dir / STATE
    state = json.loads(state_path.read_text()) if resumed_at is not None and state_path.exists() else {}
    if resumed_at is None:
        shutil.rmtree(run_dir / TENSORBOARD, ignore_errors=True)
    trackers: list[Tracker] = []
    new_state: dict[str, Any] = {}
    if "tensorboard" in report_to:
        trackers.append(TensorBoardTracker(run_dir / TENSORBOARD, params, resumed_at))
        new_state["tensorboard"] = str(run_dir / TENSORBOARD)
    if "mlflow" in report_to:
        uri = mlflow_uri or default_mlflow_uri(run_dir)
        previous = state.get("mlflow") or {}
        run_id = previous.get("run_id") if previous.get("uri") == uri else None
        location = None if mlflow_uri else (run_dir.parent.absolute() / "mlartifacts").as_uri()
        tracker = MlflowTracker(uri, run_dir.name.removesuffix(".run"), params, run_id, location)
        trackers.append(tracker)
        new_state["mlflow"] = {"uri": uri, "run_id": tracker.run_id}
    state_path.write_text(json.dumps(new_state) + "\n")
    return Trackers(trackers)


def finish_tracking(run_dir: Path, artifact: Path, manifest: dict[str, Any]) -> None:
    """After training, with the artifact complete in `artifact` (the atomic folder): copy the event files
    into it and log the final metrics (at the last step) and the folder to MLflow. Nothing to do when the
    run had no --report-to. A tracker that fails here warns; the artifact is still written."""
    state_path = Path(run_dir) / STATE
    if not state_path.exists():
        return
    state = json.loads(state_path.read_text())
    metrics = flat_metrics(manifest.get("metrics") or {})
    step = int((manifest.get("metrics") or {}).get("steps") or 0)
    if state.get("tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        target = Path(artifact) / TENSORBOARD
        shutil.copytree(state["tensorboard"], target, dirs_exist_ok=True)
        with SummaryWriter(str(target)) as writer:
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
    if state.get("mlflow"):
        try:
            from mlflow import MlflowClient

            quiet_tracker_logs()
            client = MlflowClient(tracking_uri=state["mlflow"]["uri"])
            run_id = state["mlflow"]["run_id"]
            log_metrics(client, run_id, metrics, step)
            for key in ("task", "stage", "parent"):
                if manifest.get(key):
                    client.set_tag(run_id, f"danlu.{key}", str(manifest[key]))
            out = (manifest.get("args") or {}).get("out")
            if out:
                client.set_tag(run_id, "danlu.artifact", str(Path(out).absolute()))
            client.log_artifacts(run_id, str(artifact), artifact_path="artifact")
        except Exception as e:  # a tracking server that went away must not cost the trained model
            print(f"warning: MLflow logging of the final metrics failed: {e}", file=sys.stderr)


def flat_params(params: dict[str, Any]) -> dict[str, str]:
    """Parameters as MLflow stores them: strings, nested values as JSON, at most 6000 characters."""
    return {k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))[:6000]
            for k, v in params.items()}


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested metrics dict, named by their path: {"test": {"accuracy": x}} -> test/accuracy."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_metrics(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
        client.log_batch(run_id, params=items[start:start + 100])


def log_metrics(client, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v in values.items()]
    for start in range(0, len(items), 1000):  # and at most 1000 metrics
        client.log_batch(run_id, metrics=items[start:start + 1000])


def quiet_tracker_logs() -> None:
    """MLflow announces its database migrations at INFO on the first use of a store, and its SQL store
    warns about an SQLAlchemy 2.1 deprecation it uses on purpose: not the user's news."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="The ``noload`` loader strategy is deprecated")
