"""The Model Registry and its one champion.

Each training run registers a version of its trainer's model (mlflow.registered_models.paddle /
.paddleseg), labelled with the architecture it holds; each export registers a version of the served model
(mlflow.registered_models.serving: photos in, masks out), which therefore holds every candidate of either
trainer. The champion is one alias, ``champion``, on the served model: report moves it to the version
whose training run has the best test/mIoU on the contest's test set (the served model's tag
CONTEST_TAG). Moving it only ever *sets* the alias, which MLflow's basic-auth allows with EDIT; nothing
here deletes an alias, a version or a model (MANAGE), so a team member needs no more than EDIT.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow

from stages.common.config import StageError
from stages.models.inference_model import META_NAME
from stages.models.paddleseg_model import architecture_label
from stages.tracking.store import store_call

CHAMPION = "champion"  # the alias of the served model's best version on the contest's test set
TEST_SET_TAG = "test_set"  # run tag: report's hash of the test split and its labels, what test/mIoU measured
CONTEST_TAG = "champion_test_set"  # the served model's tag: the test set the champion is chosen on
VERSION_TAGS = ("model", "architecture", "training_model")  # on each served version (export)


def registered_model_name(cfg, model: str) -> str:
    """The Model Registry name of ``model`` ("paddle", "paddleseg", "serving") from mlflow.registered_models."""
    names = cfg.mlflow.get("registered_models") or {}
    name = names.get(model)
    if not name or not str(name).strip():
        raise StageError(
            f"params.yaml: mlflow.registered_models.{model} is missing; set it to the Model "
            f"Registry name of this model, e.g. doveseg-{model}"
        )
    return str(name)


def read_registered_version(run_id_file: str | Path) -> tuple[str, str]:
    """(registered model name, version) a training run registered, from its run-id file."""
    path = Path(run_id_file)
    try:
        registered = json.loads(path.read_text())["registered_model"]
        return str(registered["name"]), str(registered["version"])
    except (OSError, ValueError, KeyError, TypeError):
        raise StageError(f"{path}: names no registered model version; rerun the training stage") from None


def label_training_version(client, name: str, version: str, model_dir: Path, stage: str, config=None) -> str | None:
    """Tag and describe a trainer's version with the architecture its model folder holds (a PP-LiteSeg
    version of the PaddleSeg model says PP-LiteSeg, in the UI's version page and its tags); the label, or
    None when the folder has no model meta to say it."""
    if not (Path(model_dir) / META_NAME).is_file():
        return None
    label = architecture_label(model_dir)
    source = f"{stage}, config {config}" if config else stage
    store_call(client.set_model_version_tag, name, version, "architecture", label)
    if config:
        store_call(client.set_model_version_tag, name, version, "paddleseg_config", str(config))
    store_call(client.update_model_version, name, version, description=f"{label}, trained by {source}")
    return label


def label_serving_version(client, name: str, version: str, model: str, architecture: str, training: str) -> None:
    """Tag and describe a served version: which trainer's model it serves (``training``: "name/version")."""
    for key, value in zip(VERSION_TAGS, (model, architecture, training)):
        store_call(client.set_model_version_tag, name, version, key, value)
    description = f"{architecture} ({model}), served on onnxruntime; trained as {training}"
    store_call(client.update_model_version, name, version, description=description)


def newest_version(client, name: str, run_id: str):
    """The newest version of ``name`` logged from training run ``run_id`` (export registers one each time
    it runs), or None."""
    versions = store_call(client.search_model_versions, f"name = '{name}' and run_id = '{run_id}'")
    return max(versions, key=lambda version: int(version.version)) if versions else None


def serving_model_uri(client, name: str, run_id: str) -> str | None:
    """models:/<name>/<version> of the served model's newest version logged from ``run_id``, or None."""
    version = newest_version(client, name, run_id)
    return f"models:/{name}/{version.version}" if version else None


@dataclass(frozen=True)
class Candidate:
    version: str
    run_id: str
    miou: float
    tags: dict


@dataclass
class Crowning:
    """What report did about the champion: ``champion`` None when nothing competes; ``note`` says why it did
    not move, or that a new contest began."""

    contest: str | None
    champion: Candidate | None = None
    moved: bool = False
    note: str | None = None


def _warn(message: str) -> None:
    print(f"report: warning: {message}", file=sys.stderr, flush=True)


def candidates(client, name: str, test_set: str) -> list[Candidate]:
    """The newest served version of each training run scored on ``test_set``; a version whose run is gone or
    deleted is skipped with a warning."""
    newest: dict[str, Candidate] = {}
    for version in store_call(client.search_model_versions, f"name = '{name}'"):
        try:
            run = store_call(client.get_run, version.run_id) if version.run_id else None
        except mlflow.exceptions.MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            _warn(f"{name} version {version.version}: its training run {version.run_id or '(none)'} is gone; skipped")
            continue
        miou = run.data.metrics.get("test/mIoU")
        if run.data.tags.get(TEST_SET_TAG) != test_set or miou is None or math.isnan(miou):
            continue
        found = Candidate(str(version.version), version.run_id, float(miou), dict(version.tags))
        if version.run_id not in newest or int(found.version) > int(newest[version.run_id].version):
            newest[version.run_id] = found
    return list(newest.values())


def best(found: list[Candidate], current: str | None) -> Candidate:
    """The best test mIoU; among equals the current champion, else the earliest version."""
    top = max(candidate.miou for candidate in found)
    tied = sorted((c for c in found if c.miou == top), key=lambda c: int(c.version))
    return next((c for c in tied if c.version == current), tied[0])


def current_champion(client, name: str) -> str | None:
    """The version the alias names (search_model_versions leaves aliases out: read the registered model)."""
    version = store_call(client.get_registered_model, name).aliases.get(CHAMPION)
    return None if version is None else str(version)


def contest_of(client, name: str, test_set: str, workspace: bool, committed: bool) -> tuple[str | None, str | None]:
    """(the test set the champion is chosen on, a note). The workspace's report (not a DVC experiment) sets
    it to its own test set; an experiment's report competes only on it (or, before any contest, when it
    scored the committed data)."""
    contest = store_call(client.get_registered_model, name).tags.get(CONTEST_TAG)
    if workspace and contest != test_set:
        store_call(client.set_registered_model_tag, name, CONTEST_TAG, test_set)
        note = (
            None
            if contest is None
            else f"a new data version: the champion is now chosen on test set {test_set} (was {contest})"
        )
        return test_set, note
    if not workspace and contest is None:
        if committed:
            store_call(client.set_registered_model_tag, name, CONTEST_TAG, test_set)
            return test_set, None
        return None, (
            f"this experiment scored test set {test_set}, not the committed data's; no contest has begun "
            "(a workspace `dvc repro` begins it): the champion does not move"
        )
    if contest != test_set:
        return contest, (
            f"this experiment scored test set {test_set}, the champion is chosen on {contest} (the committed "
            "data's): recorded, the champion does not move"
        )
    return contest, None


def crown(client, name: str, test_set: str, workspace: bool, committed: bool, attempts: int = 5) -> Crowning:
    """Move ``name``@champion to the best version scored on the contest's test set (see the module's
    docstring). Another report may crown at the same time: after each move, read again, until the alias is
    on the best version this report sees (every report scores before it crowns, so the last to read sees all)."""
    contest, note = contest_of(client, name, test_set, workspace, committed)
    result = Crowning(contest, note=note)
    if contest is None or contest != test_set:
        return result
    for _ in range(attempts):
        found = candidates(client, name, contest)
        if not found:
            return result
        current = current_champion(client, name)
        result.champion = best(found, current)
        if result.champion.version == current:
            return result
        store_call(client.set_registered_model_alias, name, CHAMPION, result.champion.version)
        result.moved = True
    return result


def retire_old_aliases(client, names: list[str]) -> None:
    """An older doveseg put ``champion`` on the trainers' models too; take it away where this login may
    (MANAGE), else say so: only the served model's alias counts."""
    for name in names:
        models = store_call(client.search_registered_models, f"name = '{name}'")
        if models and CHAMPION in models[0].aliases:
            try:
                store_call(client.delete_registered_model_alias, name, CHAMPION)
            except mlflow.exceptions.MlflowException as err:
                _warn(f"{name}@{CHAMPION} is left from an older doveseg and could not be removed ({err}); ignore it")
