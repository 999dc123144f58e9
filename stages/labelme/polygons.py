"""Class-id mask -> labelme polygons that the rasteriser (``shapes``) paints back into the same mask.

Each connected region of each class becomes one polygon; each hole of a class (a connected part of the rest
that the class encloses, whatever fills it: background, other classes, islands) becomes a ``_background_``
polygon, and whatever lies inside a hole gets its own polygons, painted later. Paint order makes it exact:
polygons go by decreasing area of their traced outline, a hole before a region of equal area. An outline
only ever encloses smaller ones, so each pixel ends up painted by the smallest outline around it: its own
region's, or for a hole's pixel the hole's ``_background_`` (labelme and convert_json paint later shapes
over earlier ones).

Regions and holes are both 4-connected (pixels sharing an edge), each traced alone (cv2.findContours, an
8-connected tracer) through the centres of its boundary pixels. Where a region touches itself only at a
corner its outline encloses a pocket; the pocket is 4-separated from the outside, so it is a hole of its
own. Pillow fills a polygon's inside and draws its outline through those centres, so an unsimplified
outline paints exactly its region's pixels (tests/test_preannotate_polygons.py checks the whole mask).
Douglas-Peucker simplification (``tolerance_px``) moves an edge by at most that much. Regions and holes
of fewer than ``min_area_px`` pixels are dropped (unless the IoU bound needs them): a dropped hole keeps its
region's class, a dropped region takes what surrounds it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from stages.labelme.shapes import shapes_to_label

HOLE = 0  # the class id a hole's polygon paints (_background_)


@dataclass(frozen=True)
class Polygon:
    class_id: int  # what it paints: a region's class, or HOLE for a hole
    points: np.ndarray  # (n, 2) int32 x, y of the (simplified) outline, n >= 3 (a point may repeat)
    area: float  # area inside the unsimplified outline: the paint order
    pixels: int  # pixels of the region or hole
    mean_weight: float  # mean of ``weights`` over those pixels (NaN without weights)


def trace_mask(
    mask: np.ndarray,
    tolerance_px: float = 0.5,
    min_area_px: int = 0,
    weights: np.ndarray | None = None,
    min_iou: float = 0.0,
) -> list[Polygon]:
    """Polygons of every non-zero class of ``mask`` (H x W class ids) in paint order.

    ``weights`` (H x W float, e.g. a confidence map) is averaged over each region's or hole's pixels.
    With ``min_iou``, the polygons are painted and compared with ``mask`` itself, so simplification and
    dropped regions count against the bound together: while a class's IoU falls below it, the tolerance
    shrinks by 30% (to 0 below 0.2 px), and at 0 the minimum area halves (to 0: unsimplified polygons of
    every region paint the mask exactly). Class 255 (ignore) is traced like any other class.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    weights = None if weights is None else np.asarray(weights, np.float64).ravel()
    exact, dropped = _exact_polygons(mask, min_area_px, weights)
    polygons = simplify(exact, tolerance_px)
    while min_iou > 0 and (polygons is not exact or dropped) and worst_iou(paint(polygons, mask.shape), mask) < min_iou:
        if polygons is not exact:
            tolerance_px = tolerance_px * 0.7 if tolerance_px > 0.2 else 0.0
        else:
            min_area_px //= 2
            exact, dropped = _exact_polygons(mask, min_area_px, weights)
        polygons = simplify(exact, tolerance_px)
    return polygons


def _exact_polygons(mask: np.ndarray, min_area_px: int, weights: np.ndarray | None) -> tuple[list[Polygon], int]:
    """Unsimplified polygons of every region and hole of at least ``min_area_px`` pixels, in paint order, and
    how many were dropped for their size."""
    exact: list[Polygon] = []
    dropped = 0
    classes = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    for class_id in classes[classes != 0]:
        region = (mask == class_id).view(np.uint8)
        for binary, paints in ((region, int(class_id)), (region ^ 1, HOLE)):
            polygons, small = _component_polygons(binary, paints, min_area_px, weights)
            exact += polygons
            dropped += small
    # Larger outlines first; at equal area a hole before a region (a region can exactly fill a hole).
    exact.sort(key=lambda polygon: (-polygon.area, polygon.class_id != HOLE))
    return exact, dropped


def simplify(polygons: list[Polygon], tolerance_px: float) -> list[Polygon]:
    """Douglas-Peucker on each outline (cv2.approxPolyDP); the same list when tolerance_px <= 0."""
    if tolerance_px <= 0:
        return polygons
    simplified = []
    for polygon in polygons:
        points = cv2.approxPolyDP(polygon.points.reshape(-1, 1, 2), float(tolerance_px), True).reshape(-1, 2)
        simplified.append(replace(polygon, points=points) if len(points) >= 3 else polygon)
    return simplified


def paint(polygons: list[Polygon], size: tuple[int, int]) -> np.ndarray:
    """The class ids labelme (and convert_json) paint from these polygons, in order."""
    shapes = [
        {"label": str(polygon.class_id), "points": polygon.points.tolist(), "shape_type": "polygon"}
        for polygon in polygons
    ]
    return shapes_to_label(size, shapes, int)


def worst_iou(painted: np.ndarray, reference: np.ndarray) -> float:
    """The lowest IoU of any class but 0 present in either; 1.0 when there is none."""
    differ = painted != reference
    if not differ.any():
        return 1.0
    extra = np.bincount(painted[differ], minlength=256)  # painted c where the reference is not c
    missed = np.bincount(reference[differ], minlength=256)  # the reference is c where c was not painted
    intersection = np.bincount(reference.ravel(), minlength=256) - missed
    union = intersection + extra + missed
    present = union > 0
    present[0] = False
    return float((intersection[present] / union[present]).min()) if present.any() else 1.0


def _component_polygons(
    binary: np.ndarray, class_id: int, min_area_px: int, weights: np.ndarray | None
) -> tuple[list[Polygon], int]:
    """One polygon per 4-connected component of ``binary`` (for holes: those off the image edge), and how
    many were dropped for their size."""
    count, components, stats, _ = _components(binary)
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    pixels = stats[:, cv2.CC_STAT_AREA]
    keep = np.ones(count, bool)
    keep[0] = False  # label 0: where binary is 0
    if class_id == HOLE:  # a hole is enclosed: off the image edge
        height, width = binary.shape
        keep &= (left > 0) & (top > 0) & (right < width) & (bottom < height)
    dropped = int((keep & (pixels < min_area_px)).sum())
    wanted = np.flatnonzero(keep & (pixels >= min_area_px))
    if not len(wanted):
        return [], dropped
    means = _means(components, pixels, weights)
    found = []
    for k in wanted:
        # Traced alone, in its bounding box: cv2 traces 8-connected, and must not merge two components
        # that touch only at a corner.
        crop = (components[top[k] : bottom[k], left[k] : right[k]] == k).view(np.uint8)
        outlines, _ = cv2.findContours(
            crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(int(left[k]), int(top[k]))
        )
        outline = outlines[0].reshape(-1, 2)
        if len(outline) < 3:  # a pixel or a straight line: repeat a point, labelme wants 3
            outline = np.concatenate([outline, np.repeat(outline[-1:], 3 - len(outline), axis=0)])
        found.append(Polygon(class_id, outline, float(cv2.contourArea(outlines[0])), int(pixels[k]), float(means[k])))
    return found, dropped


def _components(binary: np.ndarray):
    # Wu's algorithm by name: opencv-python 4.5's default (Spaghetti) segfaults with connectivity 4.
    return cv2.connectedComponentsWithStatsWithAlgorithm(binary, 4, cv2.CV_32S, cv2.CCL_WU)


def _means(components: np.ndarray, pixels: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.full(len(pixels), np.nan)
    sums = np.bincount(components.ravel(), weights=weights, minlength=len(pixels))
    return sums / np.maximum(pixels, 1)
