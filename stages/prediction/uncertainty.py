"""How sure a model is, from the logits of the same forward pass that gives its mask.

Everything is computed at the model's output resolution (a softmax over C x h x w is cheap there); only the
one-channel maps are resized to a photo's size when needed.

Per pixel, the uncertainty is ``1 - margin``: one minus the gap between the two most probable classes. It is
the distance to the argmax flipping, i.e. to the drafted outline being somewhere else, which is what a
person corrects; it lies in [0, 1] whatever the number of classes (entropy grows with the class count and
with probability spread over classes that never win).

Per photo, ``photo_score`` averages it over the predicted foreground, a border of ``border_px`` model pixels
around it, and any pixel where the decision was close (uncertainty > 0.5, e.g. a dove the model half
sees). Averaging over the whole photo would let easy background drown a badly drafted bird: a photo
with a small uncertain dove would rank with an empty sky. A photo where the model is sure of nothing
but background scores the mean over the whole photo (low).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLOSE_CALL = 0.5  # pixels above this uncertainty count towards a photo's score wherever they are


@dataclass(frozen=True)
class Certainty:
    """Maps at the model's output resolution (h x w, float32)."""

    confidence: np.ndarray  # probability of the predicted class
    uncertainty: np.ndarray  # 1 - (top probability - second probability)
    foreground: np.ndarray  # bool: the predicted class is not class 0


def softmax(logits: np.ndarray) -> np.ndarray:
    """C x h x w logits -> class probabilities (float32), numerically stable."""
    shifted = np.asarray(logits, np.float32) - np.max(logits, axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


def certainty(logits: np.ndarray) -> Certainty:
    """Confidence, uncertainty and the predicted foreground of one photo's C x h x w logits."""
    probabilities = softmax(logits)
    second, top = np.partition(probabilities, probabilities.shape[0] - 2, axis=0)[-2:]
    foreground = np.asarray(logits).argmax(axis=0) != 0
    return Certainty(top, (1.0 - (top - second)).astype(np.float32), foreground)


def score_region(maps: Certainty, border_px: int) -> np.ndarray:
    """Where a photo's score looks: the foreground grown by border_px model pixels, and the close calls."""
    region = maps.foreground.astype(np.uint8)
    if border_px > 0 and region.any():
        region = cv2.dilate(region, np.ones((3, 3), np.uint8), iterations=int(border_px))
    return region.astype(bool) | (maps.uncertainty > CLOSE_CALL)


def photo_score(maps: Certainty, border_px: int) -> tuple[float, float]:
    """(uncertainty score, mean confidence) over the score region, or over the whole photo when it is empty."""
    region = score_region(maps, border_px)
    if not region.any():
        region = np.ones_like(region)
    return float(maps.uncertainty[region].mean()), float(maps.confidence[region].mean())


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A one-channel float map resized bilinearly (pixel centres aligned) to size = (height, width)."""
    height, width = size
    values = np.asarray(values, np.float32)
    if values.shape == (height, width):
        return values
    return cv2.resize(values, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
