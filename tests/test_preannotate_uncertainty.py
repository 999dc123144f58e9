"""The uncertainty score of stages.prediction.uncertainty, on constructed logits."""

from __future__ import annotations

import numpy as np
import pytest

from stages.prediction.uncertainty import certainty, photo_score, resize_map, softmax


def two_class_logits(foreground_probability: np.ndarray) -> np.ndarray:
    """Logits (background 0, foreground log-odds) that give these foreground probabilities."""
    p = np.clip(foreground_probability, 1e-6, 1 - 1e-6)
    return np.stack([np.zeros_like(p), np.log(p / (1 - p))]).astype(np.float32)


def test_uncertainty_is_one_minus_the_margin_of_the_top_two_classes():
    logits = np.log(np.array([0.5, 0.3, 0.2], np.float32))[:, None, None] * np.ones((3, 2, 2), np.float32)
    maps = certainty(logits)
    assert softmax(logits)[:, 0, 0] == pytest.approx([0.5, 0.3, 0.2])
    assert maps.confidence == pytest.approx(np.full((2, 2), 0.5))
    assert maps.uncertainty == pytest.approx(np.full((2, 2), 1 - (0.5 - 0.3)))
    assert not maps.foreground.any()


def test_a_small_unsure_dove_outranks_a_big_sure_one():
    """Scored over the foreground and its border, not the whole photo: there, easy background would rank
    the photo with a small, badly drafted dove below the one the model is sure about."""
    small = np.full((100, 100), 0.001)
    small[45:55, 45:55] = 0.6  # a small dove the model is unsure of
    big = np.full((100, 100), 0.02)
    big[20:80, 20:80] = 0.98  # a big dove it is sure of
    small_maps, big_maps = certainty(two_class_logits(small)), certainty(two_class_logits(big))
    assert photo_score(small_maps, border_px=2)[0] > 2 * photo_score(big_maps, border_px=2)[0]
    assert small_maps.uncertainty.mean() < big_maps.uncertainty.mean()  # what a whole-photo mean would say
    assert photo_score(small_maps, 2)[1] < photo_score(big_maps, 2)[1]  # and the confidence agrees


def test_a_photo_of_sure_background_scores_its_whole_mean():
    maps = certainty(two_class_logits(np.full((8, 8), 0.01)))
    score, confidence = photo_score(maps, border_px=2)
    assert score == pytest.approx(0.02, abs=1e-4) and confidence == pytest.approx(0.99, abs=1e-4)


def test_close_calls_count_even_where_background_was_predicted():
    probability = np.full((20, 20), 0.001)
    probability[5:8, 5:8] = 0.45  # just under the line: predicted background
    maps = certainty(two_class_logits(probability))
    assert not maps.foreground.any()
    assert photo_score(maps, border_px=2)[0] == pytest.approx(0.9, abs=1e-3)


def test_resize_map_keeps_a_constant_and_the_corners():
    assert resize_map(np.full((4, 5), 0.3, np.float32), (40, 50)) == pytest.approx(np.full((40, 50), 0.3))
    ramp = resize_map(np.array([[0.0, 1.0]], np.float32), (1, 8))
    assert ramp[0, 0] == 0.0 and ramp[0, -1] == 1.0 and (np.diff(ramp[0]) >= 0).all()
