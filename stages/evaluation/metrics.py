"""One confusion-matrix metric for every stage: validation while training, test scoring, the report.

The definitions are PaddleSeg's (paddleseg.utils.metrics), so both trainers' numbers compare directly:
IoU and Dice are 0 for a class absent from both prediction and label, and pixels labelled
``ignore_index`` count nowhere.
"""
from __future__ import annotations

import numpy as np

from stages.data.labels import IGNORE_INDEX


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
        m = self.matrix.astype(np.float64)
        intersect = np.diag(m)
        pred_area = m.sum(axis=0)
        label_area = m.sum(axis=1)
        total = m.sum()
        iou = _ratio(intersect, pred_area + label_area - intersect)
        dice = _ratio(2 * intersect, pred_area + label_area)
        precision = _ratio(intersect, pred_area)
        recall = _ratio(intersect, label_area)
        acc = float(intersect.sum() / total) if total else 0.0
        expected = float((pred_area * label_area).sum() / total**2) if total else 0.0
        kappa = (acc - expected) / (1 - expected) if expected != 1 else 0.0
        return {
            "mIoU": float(iou.mean()),
            "acc": acc,
            "kappa": float(kappa),
            "mDice": float(dice.mean()),
            "IoU": iou.tolist(),
            "dice": dice.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "pixels": int(total),
        }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, with 0 where den is 0 (PaddleSeg's convention)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out
