"""Class-id masks from an exported model, at each photo's own size.

Masks go back to a photo's original size by resizing the class *scores* bilinearly and taking the argmax
there (PaddleSeg's own order in core.infer): boundaries follow the scores between the coarse pixels instead
of the staircase of nearest-neighbour class ids.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from stages.models.inference_model import Predictor, preprocess

RESIZE_METHOD = "bilinear logits, then argmax"


def predict_masks(predictor: Predictor, images: list[np.ndarray]) -> list[np.ndarray]:
    """Class-id masks (uint8, each at its image's own size) for a batch of HxWx3 uint8 RGB images.

    One photo at a time, one class at a time: the memory it takes grows with the photos' pixels, not with
    the number of classes (see scores_to_mask)."""
    batch = np.stack([preprocess(image, predictor.meta) for image in images])
    logits = predictor.logits(batch)
    del batch
    return [scores_to_mask(scores, image.shape[:2]) for scores, image in zip(logits, images)]


def scores_to_mask(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C x h x w class scores -> H x W class ids: bilinear resize of the scores, then argmax.

    The argmax runs as the classes come: each class's resized map is compared with the best so far and
    dropped, so two full-size float maps (and Pillow's buffer of the one being resized) exist at once,
    whatever the number of classes; a stack of C maps was ~1 GB per 12 MP photo with 21 classes. Ties go
    to the lower class id, as np.argmax's do: the masks are identical to the stack's argmax.
    """
    height, width = size
    if scores.shape[1:] == (height, width):
        return scores.argmax(axis=0).astype(np.uint8)
    # Bilinear resizing is linear, so each class's margin over class 0, resized, ranks the classes as the
    # resized scores would: one resize fewer, and for two classes just a sign test.
    mask = np.zeros((height, width), np.uint8)
    best = np.zeros((height, width), np.float32)  # class 0's margin over itself
    better = np.empty((height, width), bool)
    for class_id in range(1, scores.shape[0]):
        margin = _resize_bilinear(scores[class_id] - scores[0], width, height)
        np.greater(margin, best, out=better)
        np.copyto(mask, class_id, where=better)
        np.maximum(best, margin, out=best)
        del margin
    return mask


def _resize_bilinear(channel: np.ndarray, width: int, height: int) -> np.ndarray:
    # Pillow's float ("F") bilinear uses pixel centres, like Paddle's interpolate(align_corners=False).
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.BILINEAR))


def batches(items: list, size: int):
    size = max(1, int(size))
    for start in range(0, len(items), size):
        yield items[start : start + size]
