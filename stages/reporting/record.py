"""What report records in MLflow: each model's test scores and the test set they were measured on, the
report's files, and the champion (stages.tracking.registry), as reports/metrics.json names it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from stages.data.dvc_hash import is_committed
from stages.reporting.pictures import FIGURES_DIR
from stages.reporting.results import ModelResult, mlflow_metrics
from stages.tracking.registry import (
    CHAMPION,
    TEST_SET_TAG,
    Crowning,
    crown,
    registered_model_name,
    retire_old_aliases,
    serving_model_uri,
)
from stages.tracking.runs import FinishedRun, read_run_id


def log_scores(cfg, result: ModelResult, scored_on: str) -> None:
    """Test metrics, and the test set they were measured on, added to the training run (whose duration
    stays the training's)."""
    run = FinishedRun(cfg, result.run_id_file)
    run.log_metrics(mlflow_metrics(result.scored))
    run.set_tag(TEST_SET_TAG, scored_on)


def log_report(cfg, result: ModelResult, out: Path) -> None:
    run = FinishedRun(cfg, result.run_id_file)
    run.log_artifacts(out / FIGURES_DIR, "report/figures")
    for name in ("report.md", "index.html", "metrics.json"):
        run.log_artifact(out / name, "report")


def crown_champion(cfg, client, serving_name: str, results: list[ModelResult], scored_on: str) -> Crowning:
    """The served model's alias moved to the best version on the contest's test set (stages.tracking.registry),
    among every version of every model, whatever predict.models this run scored. A workspace report decides
    the contest; an experiment's report (DVC_EXP_NAME set) competes in it. Says what happened."""
    workspace = not os.environ.get("DVC_EXP_NAME", "").strip()
    committed = is_committed(cfg.data.processed_dir, cfg.data.splits_dir)
    crowning = crown(client, serving_name, scored_on, workspace, committed)
    trainers = [
        registered_model_name(cfg, model) for model in ("paddle", "paddleseg") if model in cfg.mlflow.registered_models
    ]
    retire_old_aliases(client, trainers)
    if crowning.note:
        print(f"report: {crowning.note}", file=sys.stderr, flush=True)
    unserved = [r.name for r in results if not serving_model_uri(client, serving_name, read_run_id(r.run_id_file))]
    for name in unserved:
        print(
            f"report: model {name!r} has no version of {serving_name} (export made no ONNX model): it does not "
            "compete for the champion",
            file=sys.stderr,
            flush=True,
        )
    return crowning


def champion_entry(serving_name: str, crowning: Crowning) -> dict | None:
    """reports/metrics.json's "champion": which model, its versions and score (None when nothing competes)."""
    champion = crowning.champion
    if champion is None:
        return None
    return {
        "model": champion.tags.get("model"),
        "architecture": champion.tags.get("architecture"),
        "registered_model": serving_name,
        "version": champion.version,
        "uri": f"models:/{serving_name}@{CHAMPION}",
        "version_uri": f"models:/{serving_name}/{champion.version}",
        "training_model": champion.tags.get("training_model"),
        "run_id": champion.run_id,
        "test_mIoU": champion.miou,
        "test_set": crowning.contest,
    }
