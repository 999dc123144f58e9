"""Masks at full size without a stack of full-size score maps: the work's memory does not grow with the classes."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from stages.prediction.masks import predict_masks, scores_to_mask


def stacked_argmax(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The former way: every class's margin over class 0 resized to full size, stacked, then argmax."""
    height, width = size
    margins = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(channel - scores[0]), "F").resize((width, height), Image.BILINEAR)
        )
        for channel in scores[1:]
    ]
    return np.stack([np.zeros_like(margins[0]), *margins]).argmax(axis=0).astype(np.uint8)


@pytest.mark.parametrize("classes", [2, 3, 21])
def test_masks_are_identical_to_the_stacked_argmax(classes):
    scores = np.random.default_rng(classes).normal(size=(classes, 9, 7)).astype(np.float32)
    np.testing.assert_array_equal(scores_to_mask(scores, (61, 45)), stacked_argmax(scores, (61, 45)))


def test_ties_go_to_the_lower_class_id_as_argmax():
    scores = np.zeros((4, 2, 2), np.float32)
    scores[2] = scores[3] = 1.0  # classes 2 and 3 tie everywhere, above 0 and 1
    assert (scores_to_mask(scores, (4, 4)) == 2).all()
    scores[1] = 1.0
    assert (scores_to_mask(scores, (4, 4)) == 1).all()
    assert (scores_to_mask(np.zeros((3, 2, 2), np.float32), (3, 3)) == 0).all()


def peak_units(function, height: int, width: int) -> float:
    """Peak memory that numpy and Python allocate while ``function`` runs, in full-size float maps (H*W*4
    bytes). (Pillow's own buffer for the one map being resized lies outside tracemalloc's view.)"""
    tracemalloc.start()
    try:
        function()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (height * width * 4)


def test_scores_to_mask_holds_a_few_full_size_maps_whatever_the_classes():
    height, width = 600, 800
    rng = np.random.default_rng(0)
    peaks = {}
    for classes in (3, 21):
        scores = rng.normal(size=(classes, 20, 27)).astype(np.float32)
        peaks[classes] = peak_units(lambda scores=scores: scores_to_mask(scores, (height, width)), height, width)
    # best-so-far + one class's map + the bool and uint8 masks: ~3.5 maps; a stack of C maps would be C + 1
    assert peaks[21] < 4.0 and peaks[3] < 4.0, peaks
    assert abs(peaks[21] - peaks[3]) < 0.25, peaks


def test_predict_masks_for_a_batch_holds_its_masks_and_a_few_maps_whatever_the_classes():
    height, width, count = 450, 600, 4
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    peaks = {}
    for classes in (3, 21):
        logits = rng.normal(size=(count, classes, 16, 16)).astype(np.float32)
        predictor = SimpleNamespace(
            meta=SimpleNamespace(input_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3),
            logits=lambda batch, logits=logits: logits[: len(batch)],
        )
        masks = predict_masks(predictor, images)
        for scores, mask in zip(logits, masks):
            np.testing.assert_array_equal(mask, stacked_argmax(scores, (height, width)))
        peaks[classes] = peak_units(lambda predictor=predictor: predict_masks(predictor, images), height, width)
    # the masks it returns (a quarter map each) plus the work on one photo
    assert peaks[21] < count * 0.25 + 4.0, peaks
    assert abs(peaks[21] - peaks[3]) < 0.25, peaks
