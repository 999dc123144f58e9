"""PaddleSeg 2.8.0 on Paddle 3.x: four small fixes, in one place.

PaddleSeg 2.8.0 (2023) is the newest release on PyPI; it was written for Paddle 2.4, where reductions
returned 1-element tensors and int64 * float32 promoted silently. Paddle >= 2.5 returns 0-d tensors and
Paddle 3 refuses mixed int/float arithmetic and checks in-place edits of tensors that autograd still
needs, which breaks PaddleSeg in three places on its default path (cross-entropy training, evaluation)
and a fourth when a config picks DiceLoss (e.g. in MixedLoss). ``apply()`` patches
each of them (idempotently); tests/test_paddleseg_compat.py checks that every original still fails on the
installed Paddle (so a fix is removed as soon as it is no longer needed) and that every patch works.

The patched functions are written here from their documented behaviour, not copied from PaddleSeg.
"""

from __future__ import annotations

import importlib

import paddle
import paddle.nn.functional as F
from paddleseg.models.losses.cross_entropy_loss import CrossEntropyLoss
from paddleseg.models.losses.dice_loss import DiceLoss

# Modules, not the same-named functions that paddleseg.core and paddleseg.utils re-export.
paddleseg_train = importlib.import_module("paddleseg.core.train")
paddleseg_metrics = importlib.import_module("paddleseg.utils.metrics")

# The functions as PaddleSeg ships them, kept for the tests that prove each fix is still needed.
ORIGINALS = {
    "cross_entropy_post_process": CrossEntropyLoss._post_process_loss,
    "train_loss_computation": paddleseg_train.loss_computation,
    "calculate_area": paddleseg_metrics.calculate_area,
    "dice_loss_forward": DiceLoss.forward,
}


def cross_entropy_post_process(self, logit, label, semantic_weights, loss):
    """Fix 1. Symptom: ``TypeError: (InvalidType) Type promotion only support calculations between
    floating-point numbers ... x: float32, y: int64`` from CrossEntropyLoss (every training step).

    PaddleSeg averages the per-pixel loss over the non-ignored pixels, each weighted by its class weight
    (1 without weights), optionally over the top-k hardest pixels only. It built the weights from the
    int64 label; here every factor is float32.
    """
    valid = label != self.ignore_index
    if self.avg_non_ignore:
        mask = valid.astype("float32")
    else:
        mask = paddle.ones(label.shape, dtype="float32")
    mask.stop_gradient = True
    if loss.ndim > mask.ndim:  # soft-label cross entropy keeps a trailing 1
        loss = loss.squeeze(-1)
    loss = loss * mask
    if semantic_weights is not None:
        loss = loss * semantic_weights
    if self.weight is None:
        pixel_weight = paddle.ones(label.shape, dtype="float32")
    else:
        # the class weight of each pixel's label; ignored pixels look up class 0 and are masked anyway
        safe_label = paddle.where(valid, label, paddle.zeros_like(label))
        pixel_weight = paddle.gather(self.weight.astype("float32"), safe_label.reshape([-1]))
        pixel_weight = pixel_weight.reshape(label.shape)
    pixel_weight.stop_gradient = True
    if self.top_k_percent_pixels == 1.0:
        return loss.mean() / ((mask * pixel_weight).mean() + self.EPS)
    flat_loss = loss.reshape([-1])
    k = int(self.top_k_percent_pixels * flat_loss.numel())
    top_loss, top_index = paddle.topk(flat_loss, k)
    top_weight = paddle.gather(pixel_weight.reshape([-1]), top_index)
    return top_loss.mean() / (top_weight.mean() + self.EPS)


def train_loss_computation(logits_list, labels, edges, losses):
    """Fix 2. Symptom: ``IndexError: too many indices for array: array is 0-dimensional`` in
    paddleseg.core.train at its first log line (it logs ``loss.numpy()[0]`` of every loss).

    Losses are 0-d on Paddle >= 2.5; core.train is given 1-element losses, as on Paddle 2.4.
    """
    losses_out = ORIGINALS["train_loss_computation"](logits_list, labels, edges, losses)
    return [loss.reshape([1]) if loss.ndim == 0 else loss for loss in losses_out]


def calculate_area(pred, label, num_classes, ignore_index=255):
    """Fix 3. Symptom: ``ValueError: (InvalidArgument) The axis is expected to be in range of [0, 0),
    but got 0`` from paddle.concat in paddleseg.utils.metrics.calculate_area (every evaluation).

    Returns PaddleSeg's three int64 tensors of shape [num_classes]: per class, the pixels predicted as
    it (outside ignored pixels), labelled as it, and both.
    """
    if pred.ndim == 4:
        pred = pred.squeeze(1)
    if label.ndim == 4:
        label = label.squeeze(1)
    if pred.shape != label.shape:
        raise ValueError(f"shapes of pred {pred.shape} and label {label.shape} differ")
    pred = pred.astype("int64").reshape([-1])
    label = label.astype("int64").reshape([-1])
    counted = label != ignore_index

    def per_class(values):  # pixel count of each class id in 0..num_classes-1
        return paddle.bincount(values, minlength=num_classes)[:num_classes]

    pred_area = per_class(paddle.masked_select(pred, counted))
    label_area = per_class(label)
    intersect_area = per_class(paddle.masked_select(label, counted & (pred == label)))
    return intersect_area, pred_area, label_area


def dice_loss_forward(self, logits, labels):
    """Fix 4. Symptom: ``RuntimeError: (PermissionDenied) Tensor '' used in gradient computation has been
    modified by an inplace operation`` at backward() when DiceLoss follows CrossEntropyLoss (MixedLoss, or
    two losses on one output): DiceLoss sets the caller's ignored labels to 0 in place, and cross-entropy
    kept that label tensor for its backward. (It also wrongly changes the labels the next loss sees.)

    PaddleSeg's soft Dice: per image and class, 1 - (2 * sum(p * y) + smooth) / (sum(p + y) + smooth),
    over non-ignored pixels; averaged over the batch, weighted per class, averaged over the classes.
    """
    num_classes = logits.shape[1]
    if self.weight is not None and len(self.weight) != num_classes:
        raise ValueError(f"DiceLoss has {len(self.weight)} class weights for {num_classes} classes")
    valid = labels != self.ignore_index
    mask = valid.astype(logits.dtype).unsqueeze(1)
    safe_labels = paddle.where(valid, labels, paddle.zeros_like(labels))
    target = F.one_hot(safe_labels, num_classes).transpose([0, 3, 1, 2]) * mask
    probs = F.softmax(logits, axis=1) * mask
    batch = logits.shape[0]
    probs, target = probs.reshape([batch, num_classes, -1]), target.reshape([batch, num_classes, -1])
    overlap = (probs * target).sum(axis=-1)
    total = (probs + target).sum(axis=-1)
    per_class = (1 - (2 * overlap + self.smooth) / (total + self.smooth + self.eps)).mean(axis=0)
    if self.weight is not None:
        per_class = per_class * paddle.to_tensor(self.weight, dtype=per_class.dtype)
    return per_class.sum() / num_classes


def apply() -> None:
    """Patch PaddleSeg in place; safe to call more than once."""
    CrossEntropyLoss._post_process_loss = cross_entropy_post_process
    paddleseg_train.loss_computation = train_loss_computation
    paddleseg_metrics.calculate_area = calculate_area
    DiceLoss.forward = dice_loss_forward
