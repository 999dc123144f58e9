"""DoveNet's training loss: cross-entropy (the tutorial's) plus a weighted soft Dice term.

PaddleSeg's models take their losses from their config instead (stages.training.paddleseg_config).
"""

from __future__ import annotations

import paddle

from stages.data.labels import IGNORE_INDEX


class SegLoss(paddle.nn.Layer):
    """Cross-entropy (the tutorial's loss) plus ``dice_weight`` x soft Dice loss averaged over classes.

    Dice counts a small class as much as the background, which speeds up learning thin/small objects on a
    small data set. Pixels labelled 255 count in neither term.
    """

    def __init__(self, num_classes: int, dice_weight: float = 0.0):
        super().__init__()
        self.num_classes, self.dice_weight = num_classes, dice_weight
        self.cross_entropy = paddle.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, axis=1)

    def forward(self, logits, label):
        loss = self.cross_entropy(logits, label)
        if not self.dice_weight:
            return loss
        valid = (label != IGNORE_INDEX).astype(logits.dtype)
        target = paddle.where(label == IGNORE_INDEX, paddle.zeros_like(label), label).squeeze(1)
        target = paddle.nn.functional.one_hot(target, self.num_classes).transpose([0, 3, 1, 2]) * valid
        probs = paddle.nn.functional.softmax(logits, axis=1) * valid
        intersection = (probs * target).sum(axis=[0, 2, 3])
        total = probs.sum(axis=[0, 2, 3]) + target.sum(axis=[0, 2, 3])
        dice = (2 * intersection + 1) / (total + 1)
        return loss + self.dice_weight * (1 - dice.mean())
