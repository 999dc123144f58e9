"""The metric paddle.Model.fit validates DoveNet with: mIoU and pixel accuracy on the shared confusion matrix
(stages.evaluation.metrics), so both trainers, predict and report score alike."""

from __future__ import annotations

import paddle

from stages.data.labels import IGNORE_INDEX
from stages.evaluation.metrics import ConfusionMatrix


class SegMetric(paddle.metric.Metric):
    """paddle.metric adapter over the shared ConfusionMatrix: mIoU and pixel accuracy of argmax predictions."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.matrix = ConfusionMatrix(num_classes, IGNORE_INDEX)
        self.last_scores = {}  # every score of the last accumulate(): fit resets the matrix before on_eval_end

    def name(self):
        return ["mIoU", "acc"]

    def compute(self, logits, label):
        return paddle.argmax(logits, axis=1, keepdim=True), label

    def update(self, pred, label):
        self.matrix.update(pred, label)

    def accumulate(self):
        self.last_scores = self.matrix.scores()
        return [self.last_scores["mIoU"], self.last_scores["acc"]]

    def reset(self):
        self.matrix.reset()
