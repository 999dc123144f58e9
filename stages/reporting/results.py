"""What report reads for each model: predict's scores and masks, the trainer's figures and curves, and its
MLflow run-id file; checked all at once. Also the scores as DVC metrics and as MLflow metric names."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common.config import StageError
from stages.data.split_lists import Sample, split_file
from stages.prediction.files import CLASS_ID_DIR, METRICS_NAME

RUN_ID_FILE = "mlflow_run.json"


# The headline scores (stages.evaluation.metrics: mIoU and mDice over the classes present, then PaddleSeg's
# all-classes means), and the per-class ones.
SUMMARY_KEYS = {
    "mIoU": "mIoU",
    "mIoU_all_classes": "mIoU, all classes (PaddleSeg)",
    "acc": "pixel accuracy",
    "kappa": "Cohen's kappa",
    "mDice": "mean Dice",
    "mDice_all_classes": "mean Dice, all classes (PaddleSeg)",
}


PER_CLASS_KEYS = {"IoU": "IoU", "dice": "Dice", "precision": "precision", "recall": "recall"}


# The training figures the comparison table shows (the rest stay in metrics/train_<model>.json and MLflow).
TRAINING_KEYS = {
    "best_val_mIoU": "best validation mIoU",
    "epochs": "epochs trained",
    "iters": "iterations",
    "batch_size": "batch size",
    "train_seconds": "training time (s)",
    "train_images_per_second": "training images/s",
    "num_params": "parameters",
}


@dataclass(frozen=True)
class ModelResult:
    name: str
    title: str  # e.g. "paddle (DoveNet)"
    predictions_dir: Path
    scored: dict  # predict's metrics.json
    training: dict  # scalar figures of metrics/train_<name>.json, flattened
    curves: dict  # column -> values, from plots/train_<name>.csv
    run_id_file: Path
    architecture: str  # e.g. "DoveNet", as predict's metrics.json says


def load_results(cfg, names: list[str], samples: list[Sample]) -> list[ModelResult]:
    """Every model's inputs, or one StageError listing everything missing or stale."""
    problems, results = [], []
    test_stems = sorted(sample.stem for sample in samples)
    for name in names:
        predictions_dir = Path(cfg.paths.predictions_dir) / name
        needed = {
            "predictions": predictions_dir / METRICS_NAME,
            "training metrics": Path(cfg.paths.metrics_dir) / f"train_{name}.json",
            "training curves": Path(cfg.paths.plots_dir) / f"train_{name}.csv",
            "MLflow run id": Path(cfg.paths.models_dir) / name / RUN_ID_FILE,
        }
        missing = [f"{what} {path}" for what, path in needed.items() if not path.is_file()]
        if missing:
            problems.append(f"model {name!r}: missing {', '.join(missing)} (run predict and train_{name})")
            continue
        scored = read_json(needed["predictions"])
        scored_stems = sorted(sample["stem"] for sample in scored.get("samples", []))
        if scored_stems != test_stems:
            problems.append(
                f"{needed['predictions']}: scores other samples than {split_file(cfg, 'test')}; rerun predict"
            )
            continue
        masks = [predictions_dir / CLASS_ID_DIR / f"{stem}.png" for stem in test_stems]
        lost = [str(path) for path in masks if not path.is_file()]
        if lost:
            problems.append(f"model {name!r}: predicted masks missing: {', '.join(lost[:5])}; rerun predict")
            continue
        architecture = scored.get("architecture") or ""
        results.append(
            ModelResult(
                name=name,
                title=f"{name} ({architecture})" if architecture else name,
                predictions_dir=predictions_dir,
                scored=scored,
                training=flat_scalars(read_json(needed["training metrics"])),
                curves=read_curves(needed["training curves"]),
                run_id_file=needed["MLflow run id"],
                architecture=architecture,
            )
        )
    if problems:
        raise StageError("cannot report:\n  " + "\n  ".join(problems))
    return results


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a JSON object")
    return data


def flat_scalars(data: dict, prefix: str = "") -> dict:
    """Numbers and strings of a nested dict, keyed "outer.inner" (lists are left out)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str)) or value is None:
            flat[f"{prefix}{key}"] = value
    return flat


def read_curves(path: Path) -> dict[str, list[float]]:
    """A training-curve CSV (epoch, train_loss, val_mIoU, val_acc, ...) as columns; blanks become NaN."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = reader.fieldnames or []
    if not columns:
        raise StageError(f"{path}: no header row")
    return {column: [to_float(row.get(column)) for row in rows] for column in columns}


def to_float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def dvc_metrics(scored: dict) -> dict:
    """The test scores for reports/metrics.json: summary numbers, then per-class ones by class name."""
    test = scored["test"]
    metrics = {key: test.get(key) for key in SUMMARY_KEYS}
    metrics.update({key: test[key] for key in PER_CLASS_KEYS})
    metrics["samples"] = scored["num_samples"]
    return metrics


def mlflow_metrics(scored: dict) -> dict[str, float]:
    """test/mIoU, test/acc, ..., test/IoU/<class>, test/precision/<class>, ... for MLflow."""
    test = scored["test"]
    metrics = {f"test/{key}": test.get(key) for key in SUMMARY_KEYS}
    for key in PER_CLASS_KEYS:
        for class_name, value in test[key].items():
            metrics[f"test/{key}/{metric_safe(class_name)}"] = value
    return metrics


def metric_safe(name: str) -> str:
    """MLflow metric names allow letters, digits, _ - . space : and /; anything else becomes _."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def worst_samples(results: list[ModelResult], count: int) -> list[tuple[str, dict[str, float]]]:
    """The ``count`` test samples with the lowest mean per-sample mIoU over the models, worst first."""
    per_stem: dict[str, dict[str, float]] = {}
    for result in results:
        for sample in result.scored["samples"]:
            if sample.get("mIoU") is not None:
                per_stem.setdefault(sample["stem"], {})[result.name] = sample["mIoU"]
    ranked = sorted(per_stem.items(), key=lambda item: (float(np.mean(list(item[1].values()))), item[0]))
    return ranked[: max(0, count)]


def test_set_id(samples: list[Sample]) -> str:
    """What test/mIoU is measured on: the test samples' names and label files, hashed (12 hex digits).
    Scores are comparable, and the champion chosen among them, only when this is equal."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda sample: sample.stem):
        digest.update(sample.stem.encode() + b"\0" + sample.label.read_bytes())
    return digest.hexdigest()[:12]
