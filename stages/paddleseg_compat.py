"""PaddleSeg 2.8.0 on Paddle 3.x: three small fixes, in one place.

PaddleSeg 2.8.0 (2023) is the newest release on PyPI; it was written for Paddle 2.4, where reductions
returned 1-element tensors and int64 * float32 promoted silently. Paddle >= 2.5 returns 0-d tensors and
Paddle 3 refuses mixed int/float arithmetic, which breaks PaddleSeg in three places. ``apply()`` patches
each of them (idempotently); tests/test_paddleseg_compat.py checks that every original still fails on the
installed Paddle (so a fix is removed as soon as it is no longer needed) and that every patch works.

The patched functions are written here from their documented behaviour, not copied from PaddleSeg.
"""
from __future__ import annotations

import importlib

import paddle
from paddleseg.models.losses.cross_entropy_loss import CrossEntropyLoss

# Modules, not the same-named functions that paddleseg.core and paddleseg.utils re-export.
paddleseg_train = importlib.import_module("paddleseg.core.train")
paddleseg_metrics = importlib.import_module("paddleseg.utils.metrics")

# The functions as PaddleSeg ships them, kept for the tests that prove each fix is still needed.
ORIGINALS = {
    "cross_entropy_post_process": CrossEntropyLoss._post_process_loss,
    "train_loss_computation": paddleseg_train.loss_computation,
    "calculate_area": paddleseg_metrics.calculate_area,
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


def apply() -> None:
    """Patch PaddleSeg in place; safe to call more than once."""
    CrossEntropyLoss._post_process_loss = cross_entropy_post_process
    paddleseg_train.loss_computation = train_loss_computation
    paddleseg_metrics.calculate_area = calculate_area
