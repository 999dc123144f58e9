"""labelme shapes -> class-id label image, pixel for pixel as labelme 6's ``labelme.utils.shapes_to_label``.

labelme rasterises with Pillow's ImageDraw, so do we, with the same primitives and parameters; that is
what makes the pixels identical (tests/test_labelme_shapes.py checks it against labelme 6.3.1):

- polygon (also a missing or null shape_type) and oriented_rectangle: a filled polygon with its outline;
- rectangle: the box spanned by its two corners, edges included;
- circle: points are (centre, a point on the circle); a filled disc, outline included;
- line / linestrip: a polyline 10 pixels wide;  point: a disc of radius 5;
- mask: a base64 image (labelme writes a PNG) whose nonzero pixels are placed with their top-left at the
  first point, truncated to whole pixels; the second point is the bottom-right pixel, so the points must
  span exactly the mask's size.

Differences, all where labelme fails: parts of a mask outside the image are clipped (labelme raises or
wraps around), and shapes labelme cannot draw are refused by ``shape_problems`` (labelme asserts, raises,
or returns nonsense for them: NaN or huge coordinates, where Pillow's integers overflow or its circle
drawing takes minutes). Later shapes paint over earlier ones.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask", "oriented_rectangle")

# labelme's own point counts: exact for these, "at least" for polygon and linestrip (shape_to_mask asserts
# polygon > 2; the editor never keeps a linestrip below 2 points).
EXACT_POINTS = {"rectangle": 2, "circle": 2, "line": 2, "point": 1, "mask": 2, "oriented_rectangle": 4}
MIN_POINTS = {"polygon": 3, "linestrip": 2}

LINE_WIDTH = 10  # labelme's line and linestrip width, pixels
POINT_RADIUS = 5  # labelme's point size, pixels

# Coordinates beyond this are refused. Pillow overflows 32-bit integers near 2**31 (labelme then paints
# nonsense) and its circle drawing takes ~40 s once a radius passes ~6e5; no real annotation comes close.
MAX_COORDINATE = 100_000


def shape_problems(shape: object) -> list[str]:
    """Everything wrong with one labelme shape dict, as short phrases; an empty list means it can be drawn."""
    if not isinstance(shape, dict):
        return [f"not a JSON object but a {type(shape).__name__}"]
    problems = []
    if "label" not in shape:
        problems.append("missing 'label'")
    elif not isinstance(shape["label"], str):
        problems.append(f"label must be a string, not a {type(shape['label']).__name__}")
    return problems + _geometry_problems(shape)


def shape_to_mask(image_size: tuple[int, int], shape: dict) -> np.ndarray:
    """Where one shape paints, as a bool (height, width) array; ValueError for a shape with problems
    (its label is not needed here)."""
    problems = shape_problems(shape) if not isinstance(shape, dict) else _geometry_problems(shape)
    if problems:
        raise ValueError("; ".join(problems))
    canvas = _blank_canvas(image_size)
    _paint(canvas, shape, 1)
    return np.array(canvas, dtype=bool)


def shapes_to_label(
    image_size: tuple[int, int], shapes: list[dict], class_id_of: Callable[[str], int | None]
) -> np.ndarray:
    """uint8 (height, width) class ids, 0 = background; class_id_of(label) -> id (255 for __ignore__).

    Shapes are painted in order straight onto one canvas in their class id, so later shapes cover
    earlier ones exactly as labelme's mask-by-mask assignment does. ValueError names the first bad shape
    (a shape problem, or a class id that is not an int in 0..255, e.g. None for an unknown label).
    """
    canvas = _blank_canvas(image_size)
    for index, shape in enumerate(shapes):
        label = shape.get("label") if isinstance(shape, dict) else None
        where = f"shape {index} ({label!r})" if isinstance(label, str) else f"shape {index}"
        problems = shape_problems(shape)
        if problems:
            raise ValueError(f"{where}: {'; '.join(problems)}")
        class_id = class_id_of(label)
        if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) or not 0 <= class_id <= 255:
            raise ValueError(f"{where}: class id {class_id!r} is not in 0..255")
        _paint(canvas, shape, int(class_id))
    return np.array(canvas, dtype=np.uint8)


def _blank_canvas(image_size: tuple[int, int]) -> Image.Image:
    height, width = image_size[:2]
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive (height, width), got {tuple(image_size)}")
    return Image.new("L", (int(width), int(height)), 0)


def _paint(canvas: Image.Image, shape: dict, value: int) -> None:
    """Paint one valid shape onto an "L" canvas in `value` (Pillow clips whatever falls outside)."""
    shape_type = _shape_type(shape)
    # Pillow receives the JSON numbers as they are (ints stay ints), exactly as labelme passes them.
    xy = [(x, y) for x, y in shape["points"]]
    draw = ImageDraw.Draw(canvas)
    if shape_type in ("polygon", "oriented_rectangle"):
        draw.polygon(xy, fill=value, outline=value)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle(((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))), fill=value, outline=value)
    elif shape_type == "circle":
        (cx, cy), (px, py) = xy
        radius = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)  # this formula, not hypot: same float as labelme
        _disc(draw, cx, cy, radius, value)
    elif shape_type == "point":
        ((cx, cy),) = xy
        _disc(draw, cx, cy, POINT_RADIUS, value)
    elif shape_type in ("line", "linestrip"):
        draw.line(xy, fill=value, width=LINE_WIDTH)
    elif shape_type == "mask":
        mask = _decode_mask(shape["mask"])
        left, top = int(xy[0][0]), int(xy[0][1])  # truncated toward zero, as labelme's astype(int)
        height, width = mask.shape
        canvas.paste(value, (left, top, left + width, top + height), mask=Image.fromarray(mask))


def _disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float, value: int) -> None:
    draw.ellipse(((cx - radius, cy - radius), (cx + radius, cy + radius)), fill=value, outline=value)


def _geometry_problems(shape: dict) -> list[str]:
    """Problems with shape_type, points and mask: everything but the label."""
    problems = []
    shape_type = _shape_type(shape)
    if shape_type not in SHAPE_TYPES:
        problems.append(f"unknown shape_type {shape_type!r} (labelme draws {', '.join(SHAPE_TYPES)})")
    points = shape.get("points")
    point_problems = _points_problems(points)
    problems += point_problems
    if not point_problems and shape_type in SHAPE_TYPES:
        problems += _count_problems(shape_type, len(points))
        if shape_type == "mask" and len(points) == 2:
            problems += _mask_problems(shape.get("mask"), points)
    return problems


def _shape_type(shape: dict) -> object:
    shape_type = shape.get("shape_type")
    return "polygon" if shape_type is None else shape_type  # labelme's default


def _points_problems(points: object) -> list[str]:
    if points is None:
        return ["missing 'points'"]
    if not isinstance(points, (list, tuple)):
        return [f"points must be a list of [x, y] pairs, not a {type(points).__name__}"]
    if not all(isinstance(point, (list, tuple)) and len(point) == 2 for point in points):
        return ["points must be a list of [x, y] pairs"]
    coordinates = [value for point in points for value in point]
    if not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in coordinates):
        return ["point coordinates must be numbers"]
    if not all(math.isfinite(value) for value in coordinates if isinstance(value, float)):  # JSON ints may be huge
        return ["point coordinates must be finite (no NaN or infinity)"]
    if any(abs(value) > MAX_COORDINATE for value in coordinates):
        return [f"point coordinates must lie within +-{MAX_COORDINATE} pixels"]
    return []


def _count_problems(shape_type: str, count: int) -> list[str]:
    if shape_type in EXACT_POINTS and count != EXACT_POINTS[shape_type]:
        return [f"a {shape_type} needs exactly {EXACT_POINTS[shape_type]} point(s), got {count}"]
    if shape_type in MIN_POINTS and count < MIN_POINTS[shape_type]:
        return [f"a {shape_type} needs at least {MIN_POINTS[shape_type]} points, got {count}"]
    return []


def _mask_problems(encoded: object, points: list) -> list[str]:
    if encoded is None:
        return ["a mask shape needs a 'mask' (base64 PNG)"]
    try:
        mask = _decode_mask(encoded)
    except ValueError as err:
        return [str(err)]
    (x1, y1), (x2, y2) = points
    span = (int(y2) - int(y1) + 1, int(x2) - int(x1) + 1)
    if mask.shape != span:
        return [
            (
                f"the mask is {mask.shape[1]}x{mask.shape[0]} pixels but its points span "
                f"{span[1]}x{span[0]} (width x height)"
            )
        ]
    return []


def _decode_mask(encoded: object) -> np.ndarray:
    """A mask's base64 image as a 2-D bool array (nonzero = painted), as labelme decodes it."""
    if not isinstance(encoded, str):
        raise ValueError(f"mask must be a base64 PNG string, not a {type(encoded).__name__}")
    try:
        data = base64.b64decode(encoded)  # not validate=True: labelme skips stray characters too
    except (binascii.Error, ValueError):
        raise ValueError("mask is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            mask = np.array(image)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on garbage (UnidentifiedImageError, SyntaxError...)
        raise ValueError(f"mask is not a readable image ({type(err).__name__})") from None
    if mask.ndim != 2:
        raise ValueError(f"mask must be a single-channel image, got shape {mask.shape}")
    return mask.astype(bool)
