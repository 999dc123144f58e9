"""One confusion-matrix metric for every stage: validation while training, test scoring, the report.

Per-class IoU, Dice, precision and recall are PaddleSeg's definitions (paddleseg.utils.metrics), with one
difference: a ratio with nothing to count is None (null in JSON, not logged to MLflow), not 0. A class
absent from both label and prediction has no IoU or Dice; a class never predicted has no precision; a
class absent from the label has no recall.

The headline means ``mIoU`` and ``mDice`` average over the classes present in the label or the
prediction (the convention of mmsegmentation and torchmetrics): with 20 classes in the labels file and
3 in the photos, the 17 others would otherwise count as IoU 0 and drown the score. PaddleSeg's own
means, over every class with 0 for the absent ones, stay available as ``mIoU_all_classes`` and
``mDice_all_classes`` (equal to PaddleSeg's logs). Pixels labelled ``ignore_index`` count nowhere.
"""

from __future__ import annotations

import numpy as np

from stages.data.labels import IGNORE_INDEX

HEADLINE_KEYS = ("mIoU", "mIoU_all_classes", "acc", "kappa", "mDice", "mDice_all_classes")
PER_CLASS_KEYS = ("IoU", "dice", "precision", "recall")


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: label, cols: prediction

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred, label) -> None:
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        label = np.asarray(label).reshape(-1).astype(np.int64)
        if pred.shape != label.shape:
            raise ValueError(f"prediction and label sizes differ: {pred.size} vs {label.size}")
        keep = (label != self.ignore_index) & (label >= 0) & (label < self.num_classes)
        pred, label = pred[keep], label[keep]
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"predicted class ids must be in 0..{self.num_classes - 1}")
        n = self.num_classes
        self.matrix += np.bincount(label * n + pred, minlength=n * n).reshape(n, n)

    def scores(self) -> dict:
        """Headline numbers (HEADLINE_KEYS) and per-class lists (PER_CLASS_KEYS, None where undefined).

        With no scored pixel at all, the means and acc are 0.0 (there is nothing to average)."""
        m = self.matrix.astype(np.float64)
        intersect = np.diag(m)
        pred_area = m.sum(axis=0)
        label_area = m.sum(axis=1)
        total = m.sum()
        present = (pred_area + label_area) > 0  # in the label or the prediction
        iou = _ratio(intersect, pred_area + label_area - intersect)
        dice = _ratio(2 * intersect, pred_area + label_area)
        acc = float(intersect.sum() / total) if total else 0.0
        expected = float((pred_area * label_area).sum() / total**2) if total else 0.0
        kappa = (acc - expected) / (1 - expected) if expected != 1 else 0.0
        return {
            "mIoU": _mean(iou, present),
            "mIoU_all_classes": float(np.nan_to_num(iou).mean()),
            "acc": acc,
            "kappa": float(kappa),
            "mDice": _mean(dice, present),
            "mDice_all_classes": float(np.nan_to_num(dice).mean()),
            "IoU": _listed(iou),
            "dice": _listed(dice),
            "precision": _listed(_ratio(intersect, pred_area)),
            "recall": _listed(_ratio(intersect, label_area)),
            "pixels": int(total),
        }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0."""
    out = np.full_like(num, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _mean(values: np.ndarray, present: np.ndarray) -> float:
    return float(values[present].mean()) if present.any() else 0.0


def _listed(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]
