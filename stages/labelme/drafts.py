"""Model-drafted labelme annotations: the JSON a model writes for a person to correct, and telling it apart
from a person's.

A draft is an ordinary labelme 5/6 file (``version``, ``flags``, ``shapes``, ``imagePath`` relative to the
JSON, ``imageData: null``, ``imageHeight``, ``imageWidth``) plus one extra top-level key, ``MARKER_KEY``:
which model drafted it and a digest of the shapes as drafted. labelme keeps unknown top-level keys when it
saves (``other_data``), so the marker alone cannot tell an untouched draft from one a person corrected and
saved; the digest can: a draft whose shapes no longer match their digest is a person's work now.
Each shape's ``description`` also says it was drafted, by which model, with what mean confidence; labelme
shows it beside the shape.
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path

MARKER_KEY = "doveseg_draft"
LABELME_VERSION = "5.5.0"  # the format labelme 5.5 and 6 write (and read)


class JsonState(Enum):
    MISSING = "missing"  # no JSON yet
    DRAFT = "draft"  # drafted by a model, untouched since
    PERSON = "person"  # a person's: no marker, or a draft whose shapes changed, or unreadable


def shape_description(model: str, architecture: str, confidence: float) -> str:
    by = f"{model} ({architecture})" if architecture else model
    return f"drafted by model {by}, mean confidence {confidence:.2f}"


def polygon_shape(label: str, points, description: str) -> dict:
    """A labelme polygon shape, keys in the order labelme writes them."""
    return {
        "label": label,
        "points": [[float(x), float(y)] for x, y in points],
        "group_id": None,
        "description": description,
        "shape_type": "polygon",
        "flags": {},
        "mask": None,
    }


def draft_document(shapes: list[dict], image_name: str, size: tuple[int, int], marker: dict) -> dict:
    """The labelme document of a draft for the photo ``image_name`` beside it, of ``size`` (height, width)."""
    height, width = size
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
        MARKER_KEY: {**marker, "shapes_sha256": shapes_digest(shapes)},
    }


def shapes_digest(shapes: list) -> str:
    """sha256 of what a person edits in the shapes, in a form labelme's load and save leave alone
    (points as floats, labelme's defaults filled in)."""
    canonical = []
    for item in shapes:
        shape = item if isinstance(item, dict) else {"value": item}
        points = shape.get("points")
        try:
            points = [[float(x), float(y)] for x, y in points]
        except (TypeError, ValueError):
            pass  # not a drawable shape: compare it as it is
        canonical.append(
            [
                shape.get("label"),
                points,
                shape.get("group_id"),
                shape.get("shape_type") or "polygon",
                shape.get("description") or "",
                shape.get("flags") or {},
            ]
        )
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_state(json_path: str | Path) -> JsonState:
    """Whether the JSON at ``json_path`` is missing, an untouched draft, or a person's (anything else)."""
    json_path = Path(json_path)
    if not json_path.exists():
        return JsonState.MISSING
    try:
        document = json.loads(json_path.read_bytes())
    except (OSError, ValueError):
        return JsonState.PERSON  # unreadable: still never ours to replace
    if not isinstance(document, dict) or not isinstance(document.get(MARKER_KEY), dict):
        return JsonState.PERSON
    shapes = document.get("shapes")
    if isinstance(shapes, list) and document[MARKER_KEY].get("shapes_sha256") == shapes_digest(shapes):
        return JsonState.DRAFT
    return JsonState.PERSON
