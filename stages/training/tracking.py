"""MLflow tracking shared by the trainers, predict and report (the contract is in DESIGN.md).

Each training stage makes one run in ``cfg.mlflow.experiment``; its id goes to a run-id file that
predict and report read to add test metrics and figures to the same run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import mlflow
from omegaconf import OmegaConf

from stages.common.config import StageError
from stages.common.outputs import write_json_atomic
from stages.data.split_lists import data_version

# MLflow retries an unreachable server for minutes by default; fail in seconds instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def tracking_uri(cfg) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or str(cfg.mlflow.tracking_uri)


def _use_tracking_uri(uri: str) -> None:
    """mlflow.set_tracking_uri, without its side effect of exporting MLFLOW_TRACKING_URI: that would turn
    one stage's store into every later stage's override in the same process (tests, notebooks)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def ensure_reachable(uri: str, timeout_s: float = 5) -> None:
    """Raise StageError within about ``timeout_s`` when the tracking store cannot be used."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as response:
                if response.status != 200:
                    raise StageError(f"MLflow server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            raise StageError(f"MLflow tracking server {uri} is unreachable ({err}); start it, or set "
                             "MLFLOW_TRACKING_URI / mlflow.tracking_uri to a reachable store") from None
    elif parsed.scheme == "sqlite":
        db_path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if db_path is not None and str(db_path) not in ("", ":memory:"):
            folder = db_path.parent if str(db_path.parent) else Path(".")
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise StageError(f"MLflow store {uri}: folder {folder} does not exist or is not writable")


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
    name = str(cfg.mlflow.experiment)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = urlparse(uri).scheme in ("sqlite", "")
    location = Path(cfg.mlflow.artifact_location).resolve().as_uri() if local else None
    return mlflow.create_experiment(name, artifact_location=location)


def _start(cfg, **start_kwargs):
    uri = tracking_uri(cfg)
    ensure_reachable(uri, float(cfg.mlflow.connect_timeout_s))
    _use_tracking_uri(uri)
    try:
        experiment_id = _use_experiment(cfg, uri)
        return mlflow.start_run(experiment_id=experiment_id, **start_kwargs)
    except mlflow.exceptions.MlflowException as err:
        raise StageError(f"MLflow store {uri}: {err}") from None


@contextlib.contextmanager
def training_run(cfg, stage: str, run_id_file: str | Path,
                 resume_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one training stage execution (or the resumed run of a killed one)."""
    if resume_run_id and not _run_exists(cfg, resume_run_id):
        resume_run_id = None
    run = _start(cfg, run_id=resume_run_id) if resume_run_id else _start(cfg, run_name=stage)
    try:
        if not resume_run_id:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            params = list(flatten(resolved).items())
            for start in range(0, len(params), 100):  # MLflow's batch limit
                mlflow.log_params(dict(params[start:start + 100]))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/params.yaml")
            mlflow.set_tags({
                "stage": stage,
                "profile": str(cfg.get("profile", "")),
                "git_commit": git_commit(),
                "data_version": data_version(cfg),
                "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
            })
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()
    write_json_atomic(run_id_file, {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": tracking_uri(cfg),
    })


def _run_exists(cfg, run_id: str) -> bool:
    uri = tracking_uri(cfg)
    ensure_reachable(uri, float(cfg.mlflow.connect_timeout_s))
    _use_tracking_uri(uri)
    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def log_metrics(metrics: dict, step: int | None = None) -> None:
    clean = {k: float(v) for k, v in metrics.items()
             if v is not None and not (isinstance(v, float) and math.isnan(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def read_run_id(run_id_file: str | Path) -> str:
    path = Path(run_id_file)
    try:
        return json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError) as err:
        raise StageError(f"{path}: no MLflow run id ({err}); rerun the training stage") from None


@contextlib.contextmanager
def reopen_run(cfg, run_id_file: str | Path) -> Iterator[mlflow.ActiveRun]:
    """Reopen a training stage's run, so predict and report add to it."""
    run_id = read_run_id(run_id_file)
    if not _run_exists(cfg, run_id):
        raise StageError(f"{run_id_file}: run {run_id} is not in the MLflow store {tracking_uri(cfg)}")
    with _start(cfg, run_id=run_id) as run:
        yield run


def finished_run_client(cfg, run_id_file: str | Path) -> tuple[mlflow.MlflowClient, mlflow.entities.Run]:
    """A client on cfg's store and the finished training run named in ``run_id_file``, to add to that run
    without reopening it (reopening and ending it moves its end time). Also makes that store MLflow's
    current one, for flavor ``log_model(..., run_id=...)`` calls."""
    run_id = read_run_id(run_id_file)
    uri = tracking_uri(cfg)
    ensure_reachable(uri, float(cfg.mlflow.connect_timeout_s))
    _use_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    try:
        return client, client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise StageError(f"{run_id_file}: run {run_id} is not in the MLflow store {uri}; "
                         "rerun the training stage") from None
