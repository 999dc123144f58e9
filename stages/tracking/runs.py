"""Training runs: one MLflow run per training stage execution (params, tags, the data it trained on, its
registered version), and what predict, export and report add to it later without reopening it.

Each training stage makes one run in ``cfg.mlflow.experiment`` (tagged for MLflow's "Model training" view),
logs the data it trained on, hashed as DVC does, as the run's dataset and registers its model as a new
version in the Model Registry. The run id and that version go to a run-id file; predict and report add
test metrics and figures to the same run through MlflowClient, which leaves the run's start and end times
alone (reopening it with ``start_run`` would move its end time).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from omegaconf import OmegaConf

from stages.common.config import StageError
from stages.common.outputs import write_json_atomic
from stages.data.dvc_hash import lock_entry
from stages.data.split_lists import data_version
from stages.tracking.registry import label_training_version
from stages.tracking.store import artifact_root, configured_tracking_uri, is_local, open_store, store_call, tracking_uri

# The experiment kind MLflow's UI reads to open an experiment in its "Model training" view rather than
# its GenAI one (MLflow 3.17's UI goes by its sidebar switch or the link instead: see experiment_page).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _use_experiment(cfg, uri: str) -> str:
    """The experiment's id, created if needed, tagged for the "Model training" view (older ones too)."""
    name = str(cfg.mlflow.experiment)
    experiment = store_call(mlflow.get_experiment_by_name, name)
    if experiment is None:
        location = artifact_root(cfg) if is_local(uri) else None
        try:
            return store_call(
                mlflow.create_experiment, name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except mlflow.exceptions.MlflowException:
            experiment = mlflow.get_experiment_by_name(name)  # a parallel experiment's stage made it first
            if experiment is None:
                raise
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        store_call(
            mlflow.MlflowClient().set_experiment_tag, experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )
    return experiment.experiment_id


def _start(cfg, **start_kwargs):
    uri = open_store(cfg)
    try:
        experiment_id = _use_experiment(cfg, uri)
        return store_call(mlflow.start_run, experiment_id=experiment_id, **start_kwargs)
    except mlflow.exceptions.MlflowException as err:
        raise StageError(f"MLflow store {uri}: {err}") from None


def run_name(stage: str) -> str:
    """``train_paddle · q-lr`` under a DVC experiment (DVC_EXP_NAME), else the stage's name."""
    experiment = os.environ.get("DVC_EXP_NAME", "").strip()
    return f"{stage} · {experiment}" if experiment else stage


@contextlib.contextmanager
def training_run(
    cfg, stage: str, run_id_file: str | Path, resume_run_id: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one training stage execution (or the resumed run of a killed one). On success the
    run-id file (beside the model the stage wrote) names the run and the version it registered."""
    if resume_run_id and not _run_exists(cfg, resume_run_id):
        resume_run_id = None
    run = _start(cfg, run_id=resume_run_id) if resume_run_id else _start(cfg, run_name=run_name(stage))
    try:
        if not resume_run_id:
            _log_start(cfg, stage)
        yield run
    except BaseException as err:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # the server may be what failed
            store_call(mlflow.end_run, status="FAILED")
        if isinstance(err, mlflow.exceptions.MlflowException):  # e.g. the server restarted: one line
            raise StageError(
                f"MLflow store {tracking_uri(cfg)} failed during run {run.info.run_id} "
                f"({str(err).splitlines()[0][:200]}); rerun the stage: it resumes from its "
                "last checkpoint"
            ) from None
        raise
    store_call(mlflow.end_run)
    # As configured (sqlite:///mlflow.db: the project's store wherever it is cloned), not this machine's path.
    info = {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": configured_tracking_uri(cfg),
    }
    client = mlflow.MlflowClient()
    versions = store_call(client.search_model_versions, f"run_id = '{run.info.run_id}'")
    if versions:  # the version this run registered (one per training run)
        newest = max(versions, key=lambda version: int(version.version))
        info["registered_model"] = {"name": newest.name, "version": str(newest.version)}
        config = (cfg.get(stage) or {}).get("config")  # train_paddleseg's PaddleSeg config
        label_training_version(client, newest.name, str(newest.version), Path(run_id_file).parent, stage, config)
    write_json_atomic(run_id_file, info)


def _log_start(cfg, stage: str) -> None:
    """A new run's params (flattened), config, tags and dataset."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = list(flatten(resolved).items())
    for start in range(0, len(params), 100):  # MLflow's batch limit
        store_call(mlflow.log_params, dict(params[start : start + 100]))
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/params.yaml")
    store_call(
        mlflow.set_tags,
        {
            "stage": stage,
            "profile": str(cfg.get("profile", "")),
            "git_commit": git_commit(),
            "data_version": data_version(cfg),
            "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
            "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        },
    )
    log_training_data(cfg)


class TrainingData(MetaDataset):
    """The processed samples a trainer learns from, as an MLflow dataset: named by their folder, with
    DVC's md5 of that folder as the digest (dvc.lock's ``md5`` without its ``.dir`` suffix: MLflow's UI
    splits a group's "name.digest" at the last dot) and, as the profile, DVC's size and file count plus
    the md5 of the split lists. One dataset per run, so "Group by dataset" puts each run in one group."""

    def __init__(self, cfg):
        processed, splits = str(cfg.data.processed_dir), str(cfg.data.splits_dir)
        entry = lock_entry(processed)
        self._profile = {
            "nfiles": entry["nfiles"],
            "size": entry["size"],
            "splits_dir": splits,
            "splits_md5": lock_entry(splits)["md5"] if Path(splits).is_dir() else None,
        }
        with warnings.catch_warnings():  # MLflow registers the local source twice and says so
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(processed)
        super().__init__(source, name=processed, digest=entry["md5"].removesuffix(".dir"))

    @property
    def profile(self) -> dict:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def log_training_data(cfg) -> None:
    """The training run's dataset (computed as DVC does, so it matches dvc.lock under `dvc repro` and
    an ad-hoc run outside DVC gets the hash DVC would record)."""
    if Path(cfg.data.processed_dir).is_dir():
        store_call(mlflow.log_input, TrainingData(cfg), context="training")


def experiment_page(cfg, ui_url: str) -> str:
    """The MLflow UI's page of the experiment, in its "Model training" view. MLflow 3.17's UI ignores the
    experiment's kind tag and opens in the view its sidebar switch last chose (GenAI by default) unless
    the link says ``workflowType=machine_learning``."""
    query = "?workflowType=machine_learning"
    try:
        experiment = mlflow.MlflowClient(tracking_uri(cfg)).get_experiment_by_name(str(cfg.mlflow.experiment))
    except mlflow.exceptions.MlflowException:
        experiment = None
    page = f"experiments/{experiment.experiment_id}" if experiment else "experiments"
    return f"{ui_url.rstrip('/')}/#/{page}{query}"


def _run_exists(cfg, run_id: str) -> bool:
    open_store(cfg)
    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def log_metrics(metrics: dict, step: int | None = None) -> None:
    clean = {k: float(v) for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    if clean:
        store_call(mlflow.log_metrics, clean, step=step)


def read_run_id(run_id_file: str | Path) -> str:
    path = Path(run_id_file)
    try:
        return json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError) as err:
        raise StageError(f"{path}: no MLflow run id ({err}); rerun the training stage") from None


def finished_run_client(cfg, run_id_file: str | Path) -> tuple[mlflow.MlflowClient, mlflow.entities.Run]:
    """A client on cfg's store and the finished training run named in ``run_id_file``, to add to that run
    without reopening it (reopening and ending it moves its end time). Also makes that store MLflow's
    current one, for flavor ``log_model(..., run_id=...)`` calls."""
    run_id = read_run_id(run_id_file)
    uri = open_store(cfg)
    client = mlflow.MlflowClient(uri)
    try:
        return client, store_call(client.get_run, run_id)
    except mlflow.exceptions.MlflowException:
        raise StageError(
            f"{run_id_file}: run {run_id} is not in the MLflow store {uri}; rerun the training stage"
        ) from None


class FinishedRun:
    """A finished training run that predict and report add to through MlflowClient: unlike reopening it
    with start_run, this leaves its status, start and end times alone (its duration stays the training's)."""

    def __init__(self, cfg, run_id_file: str | Path):
        self.client, run = finished_run_client(cfg, run_id_file)
        self.run_id = run.info.run_id

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if value is not None and not (isinstance(value, float) and math.isnan(value))
        ]
        for start in range(0, len(batch), 1000):  # MLflow's batch limit
            store_call(self.client.log_batch, self.run_id, metrics=batch[start : start + 1000])

    def set_tag(self, key: str, value: str) -> None:
        store_call(self.client.set_tag, self.run_id, key, value)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)
