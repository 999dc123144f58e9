"""The one schema of both trainers' results, so that `dvc metrics show`, `dvc exp show`, `dvc plots` and
the report compare DoveNet and PaddleSeg's UNet column for column.

- metrics/train_<model>.json: ``training_metrics()`` (the same keys for both; per-class IoU by class name)
- plots/train_<model>.csv: ``PLOT_COLUMNS``, one row per validation
- MLflow, per validation: ``validation_metrics()`` (val/mIoU, val/acc, val/kappa, val/mDice, val/IoU/<class>
  and ``epoch``)

DoveNet counts epochs and PaddleSeg iterations (optimizer steps); both are given, each converted from
the other with the trainer's iterations per epoch. MLflow's step is each trainer's own count (epoch,
iteration); the ``epoch`` metric lets MLflow's charts put both trainers on one x axis (X-axis: Metric).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from stages.common.outputs import write_text_atomic

STEP_COLUMNS = ("epoch", "iter")  # the x axes of the curves
PLOT_COLUMNS = (*STEP_COLUMNS, "train_loss", "val_mIoU", "val_acc")
SCORE_KEYS = ("mIoU", "acc", "kappa", "mDice")  # the validation scores kept for the best model


def epochs(iters: int, iters_per_epoch: int) -> int | float:
    """Iterations as epochs: a whole number when it is one, else rounded to 3 decimals."""
    value = iters / max(1, iters_per_epoch)
    return int(value) if value.is_integer() else round(value, 3)


def training_metrics(
    *,
    num_params: dict,
    best_scores: dict | None,
    class_names,
    iters: int,
    best_iter: int,
    resumed_from_iter: int,
    iters_per_epoch: int,
    train_seconds: float,
    train_step_seconds: float,
    train_images: int,
    input_size: int,
    crop_size: int,
    batch_size: int,
    device: str,
) -> dict:
    """metrics/train_<model>.json. ``best_scores``: ConfusionMatrix.scores() of the best validation
    (None where a checkpoint from an older version holds none: those scores are then null)."""
    best = best_scores or {}
    iou = best.get("IoU") or [None] * len(class_names)
    return {
        "num_params": int(num_params["total"]),
        "num_trainable_params": int(num_params["trainable"]),
        **{f"best_val_{key}": best.get(key) for key in SCORE_KEYS},
        "best_val_IoU": dict(zip(class_names, iou)),
        "best_epoch": epochs(best_iter, iters_per_epoch),
        "best_iter": int(best_iter),
        "epochs": epochs(iters, iters_per_epoch),
        "iters": int(iters),
        "resumed_from_epoch": epochs(resumed_from_iter, iters_per_epoch),
        "resumed_from_iter": int(resumed_from_iter),
        "train_seconds": round(train_seconds, 2),
        "train_images_per_second": round(train_images / max(train_step_seconds, 1e-9), 3),
        "input_size": int(input_size),
        "crop_size": int(crop_size),
        "batch_size": int(batch_size),
        "device": device,
    }


def validation_metrics(scores: dict, class_names, epoch: float) -> dict:
    """One validation's scores under the MLflow names both trainers log, and the epoch it came after."""
    metrics = {"epoch": epoch, **{f"val/{key}": scores.get(key) for key in SCORE_KEYS}}
    metrics.update({f"val/IoU/{metric_safe(name)}": iou for name, iou in zip(class_names, scores["IoU"])})
    return metrics


def metric_safe(name: str) -> str:
    """MLflow metric names allow letters, digits, _ - . space : and /; anything else becomes _."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def write_plots(path: str | Path, history: list[dict]) -> None:
    """plots/train_<model>.csv: PLOT_COLUMNS of every history row (other keys are left out)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PLOT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buffer.getvalue())
