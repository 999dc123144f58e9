"""MLflow tracking shared by the trainers, predict and report (the contract is in DESIGN.md).

Each training stage makes one run in ``cfg.mlflow.experiment`` (tagged for MLflow's "Model training"
view), logs the data it trained on, hashed as DVC does, as the run's dataset and registers its model as
a new version in the Model Registry. The run id and that version go to a run-id file; predict and report add
test metrics and figures to the same run through MlflowClient, which leaves the run's start and end
times alone (reopening it with ``start_run`` would move its end time), and report names the champion.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from omegaconf import OmegaConf

from stages.common.config import StageError
from stages.common.outputs import write_json_atomic
from stages.data.dvc_hash import lock_entry
from stages.data.split_lists import data_version

# MLflow retries an unreachable server for minutes by default; fail in seconds instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

# The experiment kind MLflow's UI reads to open an experiment in its "Model training" view rather than
# its GenAI one (MLflow 3.17's UI goes by its sidebar switch or the link instead: see experiment_page).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
CHAMPION = "champion"  # the Model Registry alias of the best model on the test split


def configured_tracking_uri(cfg) -> str:
    """The store as configured (MLFLOW_TRACKING_URI, else mlflow.tracking_uri), before resolving."""
    return os.environ.get("MLFLOW_TRACKING_URI") or str(cfg.mlflow.tracking_uri)


def tracking_uri(cfg) -> str:
    """The store every stage, tool and test uses: the configured URI, a relative local one resolved
    against the project root (resolve_local_uri)."""
    return resolve_local_uri(configured_tracking_uri(cfg))


def project_root() -> Path:
    """The DVC project's root, where relative local MLflow locations live. DVC sets DVC_ROOT for every
    stage it runs, to the parent repo's root for queued and --temp experiments, which run in a throwaway
    copy (.dvc/tmp/exps/...): without it each would write a new, empty store there. A stage run by
    hand runs from the repo root (stage_main insists on ./params.yaml)."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def resolve_local_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` -> ``sqlite:////<project root>/mlflow.db`` (a relative ``file:`` store
    likewise); absolute paths, in-memory databases and server URIs stay as they are."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///"):
        path, query = (uri[len("sqlite:///") :].split("?", 1) + [""])[:2]
        if path in ("", ":memory:") or Path(path).is_absolute():
            return uri
        return f"sqlite:///{project_root() / path}" + (f"?{query}" if query else "")
    if parsed.scheme == "file" and not parsed.netloc and not Path(parsed.path).is_absolute():
        return (project_root() / parsed.path).as_uri()
    return uri


def artifact_root(cfg) -> str:
    """mlflow.artifact_location as a URI for a new experiment on a local store (relative: to the project root)."""
    location = str(cfg.mlflow.artifact_location)
    if len(urlparse(location).scheme) > 1:  # s3://, file://, ... (one letter: a Windows drive)
        return location
    return (project_root() / location).resolve().as_uri()


def _use_tracking_uri(uri: str) -> None:
    """mlflow.set_tracking_uri, without its side effect of exporting MLFLOW_TRACKING_URI: that would turn
    one stage's store into every later stage's override in the same process (tests, notebooks)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


STORE_RETRIES = {"count": 0}  # how often store_call retried in this process (bench/mlflow_sqlite_writers.py)


def store_call(fn, *args, attempts: int = 6, **kwargs):
    """``fn(*args, **kwargs)``, retried with a growing pause while SQLite answers "database is locked".
    Parallel experiments (`dvc queue start -j 2`) write to one SQLite store; MLflow waits up to 20 s for
    another writer (its busy timeout), and bench/mlflow_sqlite_writers.py measured no call that needed
    more with 2-4 writers; this covers a longer write (a busy disk, a reader holding the file). A call
    that failed so wrote nothing (its transaction rolled back), so calling it again is safe."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException or SQLAlchemy's OperationalError, depending on the call
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            STORE_RETRIES["count"] += 1
            time.sleep(min(0.05 * 2**attempt, 2.0) * (1 + random.random()))


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
            raise StageError(
                f"MLflow tracking server {uri} is unreachable ({err}); start it, or set "
                "MLFLOW_TRACKING_URI / mlflow.tracking_uri to a reachable store"
            ) from None
        _check_login(uri, timeout_s)
    elif parsed.scheme == "sqlite":
        db_path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if db_path is not None and str(db_path) not in ("", ":memory:"):
            folder = db_path.parent if str(db_path.parent) else Path(".")
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise StageError(f"MLflow store {uri}: folder {folder} does not exist or is not writable")


def _check_login(uri: str, timeout_s: float) -> None:
    """A server with logins (mlflow server --app-name basic-auth) answers /health to anyone: ask it for
    something that needs the login in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/search",
            "GET",
            params={"max_results": 1},
            max_retries=0,
            timeout=timeout_s,
        )
    except mlflow.exceptions.MlflowException as err:
        raise StageError(f"MLflow tracking server {uri}: {err}") from None
    if response.status_code == 401:
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        raise StageError(
            f"MLflow tracking server {uri} refused the login "
            f"{'of ' + repr(who) if who else '(none given)'}: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to your account on it"
        )


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
        local = urlparse(uri).scheme in ("sqlite", "", "file")
        location = artifact_root(cfg) if local else None
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


def open_store(cfg) -> str:
    """Check cfg's store and make it MLflow's current one; its URI."""
    uri = tracking_uri(cfg)
    ensure_reachable(uri, float(cfg.mlflow.connect_timeout_s))
    _use_tracking_uri(uri)
    return uri


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
    """One MLflow run for one training stage execution (or the resumed run of a killed one)."""
    if resume_run_id and not _run_exists(cfg, resume_run_id):
        resume_run_id = None
    run = _start(cfg, run_id=resume_run_id) if resume_run_id else _start(cfg, run_name=run_name(stage))
    try:
        if not resume_run_id:
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
    versions = store_call(mlflow.MlflowClient().search_model_versions, f"run_id = '{run.info.run_id}'")
    if versions:  # the version this run registered (one per training run)
        newest = max(versions, key=lambda version: int(version.version))
        info["registered_model"] = {"name": newest.name, "version": str(newest.version)}
    write_json_atomic(run_id_file, info)


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


def registered_model_name(cfg, model: str) -> str:
    """The Model Registry name of ``model`` ("paddle", "paddleseg") from mlflow.registered_models."""
    names = cfg.mlflow.get("registered_models") or {}
    name = names.get(model)
    if not name or not str(name).strip():
        raise StageError(
            f"params.yaml: mlflow.registered_models.{model} is missing; set it to the Model "
            f"Registry name of this model, e.g. doveseg-{model}"
        )
    return str(name)


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


def read_registered_version(run_id_file: str | Path) -> tuple[str, str]:
    """(registered model name, version) a training run registered, from its run-id file."""
    path = Path(run_id_file)
    try:
        registered = json.loads(path.read_text())["registered_model"]
        return str(registered["name"]), str(registered["version"])
    except (OSError, ValueError, KeyError, TypeError):
        raise StageError(f"{path}: names no registered model version; rerun the training stage") from None


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


TEST_SET_TAG = "test_set"  # report's hash of the test split and its labels: what test/mIoU was measured on


def crown_champion(cfg, names: list[str], test_set: str) -> tuple[str, str, str] | None:
    """Set the alias ``champion`` on the registered version, of all the models ``names``, with the best
    test/mIoU among the versions whose run was scored on ``test_set`` (the run tag TEST_SET_TAG), and take
    it from every other model, so one version is the champion. A tie keeps the current champion, so an
    experiment that is no better cannot take it. Returns (registered name, version, training run id), or
    None when no version has been scored on this test set."""
    client = mlflow.MlflowClient(tracking_uri(cfg))
    for _ in range(3):  # another experiment's report may crown at the same time: settle on what both see
        scored, current = [], None
        for name in names:
            for model in store_call(client.search_registered_models, f"name = '{name}'"):  # [] if none yet
                if CHAMPION in model.aliases:  # (search_model_versions leaves versions' aliases out)
                    current = (name, str(model.aliases[CHAMPION]))
            for version in store_call(client.search_model_versions, f"name = '{name}'"):
                run = store_call(client.get_run, version.run_id) if version.run_id else None
                miou = run.data.metrics.get("test/mIoU") if run else None
                if run and run.data.tags.get(TEST_SET_TAG) == test_set and miou is not None and not math.isnan(miou):
                    scored.append((miou, name, str(version.version), version.run_id))
        if not scored:
            return None
        best_score = max(item[0] for item in scored)
        best = sorted((item for item in scored if item[0] == best_score), key=lambda item: int(item[2]))
        _, name, version, run_id = next((item for item in best if item[1:3] == current), best[0])
        if (name, version) != current:
            store_call(client.set_registered_model_alias, name, CHAMPION, version)
        for other in sorted(set(names) - {name}):
            for model in store_call(client.search_registered_models, f"name = '{other}'"):  # [] if none yet
                if CHAMPION in model.aliases:
                    store_call(client.delete_registered_model_alias, other, CHAMPION)
        if (name, version) == current:
            return name, version, run_id
    return name, version, run_id


def _newest_version(client, name: str, run_id: str):
    """The newest version of the registered model ``name`` logged from training run ``run_id`` (export
    registers one each time it runs), or None."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max(versions, key=lambda version: int(version.version)) if versions else None


def serving_model_uri(cfg, run_id: str) -> str | None:
    """models:/<name>/<version> of the served model's (mlflow.registered_models.serving) newest version
    logged from training run ``run_id``; None when it logged none."""
    name = registered_model_name(cfg, "serving")
    version = _newest_version(mlflow.MlflowClient(tracking_uri(cfg)), name, run_id)
    return f"models:/{name}/{version.version}" if version else None


def crown_serving_champion(cfg, champion_run_id: str) -> str | None:
    """Point the served model's alias ``champion`` (mlflow.registered_models.serving) at the version logged
    from the champion's training run, so `mlflow models serve -m models:/<serving>@champion` serves the
    champion whichever architecture holds it. Returns that version's models:/ URI; None, with a warning and
    the alias taken away, when the run logged none (its export made no ONNX model): the alias never names a
    model that is not the champion."""
    name = registered_model_name(cfg, "serving")
    client = mlflow.MlflowClient(tracking_uri(cfg))
    version = _newest_version(client, name, champion_run_id)
    if version is not None:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        return f"models:/{name}/{version.version}"
    print(
        f"warning: the champion's training run {champion_run_id} logged no version of the served model "
        f"{name!r} (run the export stage); models:/{name}@{CHAMPION} is unset",
        file=sys.stderr,
    )
    if client.search_registered_models(f"name = '{name}'") and CHAMPION in client.get_registered_model(name).aliases:
        client.delete_registered_model_alias(name, CHAMPION)
    return None
