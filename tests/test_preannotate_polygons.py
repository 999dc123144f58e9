"""Mask -> labelme polygons (stages.labelme.polygons): painted back in order, they give the mask again."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stages.labelme.polygons import HOLE, paint, trace_mask, worst_iou
from stages.labelme.shapes import shapes_to_label


def as_shapes(polygons) -> list[dict]:
    return [
        {"label": str(polygon.class_id), "points": polygon.points.tolist(), "shape_type": "polygon"}
        for polygon in polygons
    ]


def smooth_mask(seed: int, height: int = 240, width: int = 320, levels=(0.55, 0.7, 0.85)) -> np.ndarray:
    """Blobs like a model's upsampled prediction: nested classes, holes, islands in holes, several regions."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 20, width // 20)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC))
    mask = np.zeros((height, width), np.uint8)
    for class_id, level in enumerate(levels, 1):
        mask[field > level] = class_id
    return mask


def test_pixel_noise_is_traced_exactly_without_simplification():
    """Random pixels hold every corner case: corner-touching regions, crossings of two classes, islands in
    holes in islands, one-pixel regions, regions on the image edge, class 255."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = rng.integers(1, 14, size=2)
        mask = rng.integers(0, rng.integers(2, 5), size=(height, width)).astype(np.uint8)
        if rng.random() < 0.3:
            mask[mask == 3] = 255
        painted = shapes_to_label(mask.shape, as_shapes(trace_mask(mask, tolerance_px=0, min_area_px=0)), int)
        assert (painted == mask).all(), f"\n{mask}\npainted\n{painted}"


def test_nested_rings_and_islands_exactly():
    mask = np.zeros((40, 40), np.uint8)
    mask[2:38, 2:38] = 1  # a square of class 1
    mask[6:34, 6:34] = 0  # with a hole
    mask[9:31, 9:31] = 2  # holding a class-2 square
    mask[12:28, 12:28] = 1  # holding a class-1 island
    mask[15:25, 15:25] = 0  # with a hole of its own
    mask[18:22, 18:22] = 1  # and an island in that
    mask[0, 0] = mask[1, 1] = 2  # two class-2 pixels touching at a corner
    polygons = trace_mask(mask, tolerance_px=0, min_area_px=0)
    assert (paint(polygons, mask.shape) == mask).all()
    assert sum(polygon.class_id == HOLE for polygon in polygons) == 3  # the hole in 1, in 2, in the island
    assert sum(polygon.class_id == 2 for polygon in polygons) == 3  # the square and two lone pixels


def test_labelmes_own_rasteriser_agrees():
    labelme_utils = pytest.importorskip("labelme.utils")
    mask = smooth_mask(3, 120, 160)
    shapes = as_shapes(trace_mask(mask, tolerance_px=0, min_area_px=0))
    painted, _ = labelme_utils.shapes_to_label(mask.shape, shapes, {str(c): c for c in range(4)})
    assert (painted == mask).all()


def test_each_hole_comes_after_the_region_around_it():
    mask = np.zeros((30, 30), np.uint8)
    mask[5:25, 5:25] = 1
    mask[10:15, 10:15] = 0
    polygons = trace_mask(mask, tolerance_px=0.5, min_area_px=0)
    assert [polygon.class_id for polygon in polygons] == [1, HOLE]
    assert (paint(polygons, mask.shape) == mask).all()


@pytest.mark.parametrize("seed", range(3))
def test_simplification_shrinks_its_tolerance_until_the_iou_bound_holds(seed):
    """Thin rings of nested classes: at 0.5 px they fall below 0.99; min_iou brings them back, still with a
    fraction of the vertices."""
    mask = smooth_mask(seed)
    exact = trace_mask(mask, tolerance_px=0, min_area_px=0)
    assert worst_iou(paint(trace_mask(mask, tolerance_px=0.5), mask.shape), mask) < 0.99
    guarded = trace_mask(mask, tolerance_px=0.5, min_iou=0.99)
    assert 0.99 <= worst_iou(paint(guarded, mask.shape), mask) < 1.0
    assert sum(len(polygon.points) for polygon in guarded) < 0.5 * sum(len(polygon.points) for polygon in exact)


def test_worst_iou_is_the_lowest_class_but_background():
    reference = np.array([[0, 1, 1, 2]], np.uint8)
    assert worst_iou(np.array([[0, 1, 0, 2]], np.uint8), reference) == 0.5
    assert worst_iou(np.array([[1, 1, 1, 2]], np.uint8), reference) == pytest.approx(2 / 3)
    assert worst_iou(np.zeros((1, 4), np.uint8), np.zeros((1, 4), np.uint8)) == 1.0


def test_small_regions_and_holes_are_dropped():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:30, 5:30] = 1
    mask[10:12, 10:12] = 0  # a 4-pixel hole
    mask[35:37, 35:38] = 1  # a 6-pixel speck
    mask[15:20, 15:20] = 0  # a 25-pixel hole
    polygons = trace_mask(mask, tolerance_px=0, min_area_px=10)
    painted = paint(polygons, mask.shape)
    assert (painted[10:12, 10:12] == 1).all() and (painted[35:37, 35:38] == 0).all()
    assert (painted[15:20, 15:20] == 0).all()
    assert sorted(polygon.pixels for polygon in polygons) == [25, 25 * 25 - 4 - 25]


def test_the_iou_bound_keeps_small_regions_when_dropping_them_would_break_it():
    """Four 9-pixel specks are 4% of their class: dropped at min_area_px=30, the class falls to 0.96 against
    the mask; with min_iou the minimum area gives way until the bound holds against the mask itself."""
    mask = np.zeros((60, 60), np.uint8)
    mask[5:35, 5:35] = 1
    for row, col in ((45, 5), (45, 20), (50, 40), (40, 50)):
        mask[row : row + 3, col : col + 3] = 1
    dropped = trace_mask(mask, tolerance_px=0.5, min_area_px=30)
    assert worst_iou(paint(dropped, mask.shape), mask) < 0.97 and len(dropped) == 1
    guarded = trace_mask(mask, tolerance_px=0.5, min_area_px=30, min_iou=0.99)
    assert worst_iou(paint(guarded, mask.shape), mask) >= 0.99
    assert sorted(polygon.pixels for polygon in guarded) == [9, 9, 9, 9, 900]


def test_weights_are_averaged_over_each_region_and_hole():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:18, 2:18] = 1
    mask[6:10, 6:10] = 0
    weights = np.where(mask == 1, 0.9, 0.2)
    weights[0, 0] = 5.0  # outside both: must not count
    by_class = {polygon.class_id: polygon.mean_weight for polygon in trace_mask(mask, 0.5, 0, weights=weights)}
    assert by_class == pytest.approx({1: 0.9, HOLE: 0.2})


def test_an_empty_mask_has_no_polygons():
    assert trace_mask(np.zeros((5, 7), np.uint8)) == []
