"""Deterministic generator of multi-class, phone-sized labelme sets: objects on the ground, any photo size.

    .venv/bin/python -m demo_data.multiclass --out /tmp/photos --count 8 --size 4032x3024 --seed 0

Writes ``IMG_0000.jpg`` + ``IMG_0000.json`` (labelme 5: imagePath relative, imageData null) per photo and
``labels.txt`` (labelme2voc format: ``__ignore__``, ``_background_``, then the classes). The classes are the
first ``classes`` of CATALOG (doves, stones, leaves, branches, bottles...), each with its own rate, so the
later ones are rare and a small set holds only a handful of them, as people's own photos do.

Each photo depends only on (seed, index, size, classes). Like a phone, some files keep their pixels as the
sensor wrote them (``size``, e.g. 4032x3024) with an EXIF Orientation tag: the picture as seen, and
annotated, is then portrait (3024x4032) or upside down.

Quick at 12 MP: the scene (ground, objects with their shading) is painted at a small working size
(WORK_SIDE on the long side) and upscaled; only compositing and sensor noise run at full size. The
annotation is exact: the object polygons are scaled to full size, and the full-size picture shows an
object's colours exactly where labelme's rasteriser (stages.labelme.shapes, proven identical to labelme's)
paints its polygon, in the JSON's order (later shapes over earlier ones).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from demo_data import doves
from demo_data.doves import encode_jpeg, labelme_dict
from stages.labelme.shapes import shapes_to_label

DEFAULT_SIZE = (4032, 3024)  # width, height of the stored pixels: a 12 MP phone photo
WORK_SIDE = 640  # long side of the small picture the scene is painted at
ROTATED_SHARE = 0.3  # photos stored sideways or upside down, with an EXIF Orientation tag
ORIENTATIONS = (6, 8, 3)  # tags of those photos (6: portrait, the usual phone case)
ORIENTATION_WEIGHTS = (0.7, 0.15, 0.15)
NOISE_TILE = 256  # sensor noise is a random tile of this side, repeated at a random offset
LABELS_NAME = "labels.txt"


@dataclass(frozen=True)
class ObjectClass:
    name: str
    rate: float  # expected objects of this class per photo
    kind: str  # how it is drawn (see paint_object)
    colours: tuple  # base colours, one picked per object
    size: tuple[float, float]  # longest side, as a fraction of the photo's short side


# Common classes first, rare ones later: a set with few photos holds only a handful of the later ones.
CATALOG = (
    ObjectClass("dove", 0.45, "dove", (), (0.3, 0.55)),
    ObjectClass(
        "stone", 0.9, "stone", ((150, 150, 146), (120, 112, 100), (176, 168, 150), (96, 96, 100)), (0.07, 0.18)
    ),
    ObjectClass("leaf", 0.9, "leaf", ((200, 120, 40), (196, 168, 62), (96, 122, 52), (168, 70, 40)), (0.06, 0.13)),
    ObjectClass("branch", 0.5, "branch", ((92, 66, 46), (70, 50, 36), (120, 96, 70)), (0.35, 0.8)),
    ObjectClass("bottle", 0.3, "bottle", ((196, 200, 204), (60, 110, 70), (120, 84, 52)), (0.2, 0.34)),
    ObjectClass("can", 0.2, "can", ((200, 40, 40), (180, 184, 190), (40, 80, 160)), (0.09, 0.15)),
    ObjectClass("feather", 0.15, "feather", ((214, 214, 210), (150, 154, 164), (90, 90, 96)), (0.07, 0.13)),
    ObjectClass("bag", 0.12, "bag", ((228, 228, 226), (40, 40, 44), (200, 60, 50)), (0.16, 0.3)),
    ObjectClass("ball", 0.08, "disc", ((220, 200, 40), (230, 60, 40), (240, 240, 236)), (0.08, 0.14)),
    ObjectClass("bread", 0.07, "stone", ((176, 128, 78), (200, 160, 104)), (0.07, 0.14)),
    ObjectClass("pinecone", 0.06, "stone", ((110, 76, 48), (132, 92, 56)), (0.06, 0.1)),
    ObjectClass("coin", 0.05, "disc", ((190, 160, 80), (170, 170, 170)), (0.025, 0.04)),
    ObjectClass("shell", 0.05, "stone", ((230, 214, 196), (214, 190, 170)), (0.04, 0.08)),
    ObjectClass("acorn", 0.04, "stone", ((150, 110, 50), (120, 90, 40)), (0.03, 0.05)),
    ObjectClass("mushroom", 0.04, "stone", ((196, 160, 120), (170, 60, 40)), (0.05, 0.1)),
    ObjectClass("flower", 0.04, "disc", ((240, 240, 230), (230, 190, 50), (200, 80, 160)), (0.03, 0.06)),
    ObjectClass("snail", 0.03, "stone", ((150, 120, 80), (110, 90, 70)), (0.04, 0.07)),
    ObjectClass("glove", 0.03, "bag", ((60, 60, 70), (200, 180, 60)), (0.1, 0.16)),
    ObjectClass("cup", 0.03, "can", ((240, 240, 236), (200, 40, 40)), (0.08, 0.12)),
    ObjectClass("key", 0.02, "branch", ((180, 170, 120), (170, 170, 176)), (0.05, 0.08)),
    ObjectClass("cork", 0.02, "can", ((190, 150, 100),), (0.04, 0.06)),
)
MAX_CLASSES = len(CATALOG)


@dataclass
class Photo:
    """One generated photo as labelme shows it (EXIF orientation applied), with its annotation."""

    name: str
    rgb: np.ndarray  # HxWx3 uint8 (as seen), before JPEG
    shapes: list[dict]  # labelme shapes, in paint order
    label: np.ndarray  # HxW uint8 class ids the picture was composited with
    orientation: int  # EXIF Orientation tag of the stored file (1: none)
    quality: int  # JPEG quality
    class_names: tuple[str, ...]  # labels file order: _background_, then the classes
    objects: list[str] = field(default_factory=list)  # class of each drawn object, back to front


def class_names(classes: int) -> tuple[str, ...]:
    """The labels file's class list (after ``__ignore__``) for the first ``classes`` catalog entries."""
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be 1..{MAX_CLASSES}, got {classes}")
    return ("_background_", *(entry.name for entry in CATALOG[:classes]))


def labels_text(classes: int) -> str:
    return "__ignore__\n" + "\n".join(class_names(classes)) + "\n"


def sample_name(index: int) -> str:
    return f"IMG_{index:04d}"


# ---------------------------------------------------------------------------------------------- painting
def _shaded(rng, layer: np.ndarray, outline: np.ndarray, frame: doves.Frame, colour, light, **options) -> np.ndarray:
    mask = doves.polygon_mask(outline, *layer.shape[:2])
    doves.paint_shaded(layer, mask, frame, colour, light, rng, **options)
    return mask


def paint_object(
    rng, layer: np.ndarray, entry: ObjectClass, cx: float, cy: float, length: float, light
) -> list[tuple[str, np.ndarray]]:
    """Paint one object of ``entry`` centred at (cx, cy) on ``layer`` (working size) and return its labelme
    outlines in working coordinates: [(shape_type, points)], a circle as (centre, point on the circle)."""
    colour = doves.jitter(rng, entry.colours[rng.integers(0, len(entry.colours))], 12) if entry.colours else None
    angle = rng.uniform(0, math.pi)
    kind = entry.kind
    if kind == "stone":
        rx, ry = length / 2, length / 2 * rng.uniform(0.55, 0.9)
        outline = doves.chaikin(doves.blob(rng, cx, cy, rx, ry, angle, 0.12, n=16), 2)
        _shaded(rng, layer, outline, doves.Frame(cx, cy, rx, ry, angle), colour, light, texture=0.2)
        return [("polygon", outline)]
    if kind in ("leaf", "feather"):
        width = 0.42 if kind == "leaf" else 0.22
        outline = doves.along(
            doves.chaikin([(-0.5, 0.0), (-0.2, -1.0), (0.25, -0.8), (0.5, 0.0), (0.25, 0.8), (-0.2, 1.0)], 2),
            (cx, cy),
            angle,
            length,
            length * width / 2,
        )
        _shaded(
            rng, layer, outline, doves.Frame(cx, cy, length / 2, length * width / 2, angle), colour, light, texture=0.1
        )
        rib = doves.along(
            [(-0.5, -0.03), (0.5, -0.01), (0.5, 0.01), (-0.5, 0.03)], (cx, cy), angle, length, length * width / 2
        )
        layer[doves.polygon_mask(rib, *layer.shape[:2])] *= 0.8
        return [("polygon", outline)]
    if kind == "branch":  # a bent stick: a polygon around a three-segment centre line
        width = length * rng.uniform(0.04, 0.07)
        bend = rng.uniform(-0.25, 0.25, 2)
        spine = [(-0.5, 0.0), (-0.17, bend[0]), (0.17, bend[1]), (0.5, 0.0)]
        upper = [(u, v * 4 - 0.5) for u, v in spine]
        lower = [(u, v * 4 + 0.5) for u, v in reversed(spine)]
        outline = doves.along(upper + lower, (cx, cy), angle, length, width)
        _shaded(
            rng,
            layer,
            outline,
            doves.Frame(cx, cy, length / 2, width, angle),
            colour,
            light,
            texture=0.25,
            cylinder=True,
        )
        return [("polygon", outline)]
    if kind in ("bottle", "can"):
        radius = length * (rng.uniform(0.14, 0.2) if kind == "bottle" else rng.uniform(0.3, 0.38))
        body = [(-0.5, -1), (0.3, -1), (0.5, -0.7), (0.5, 0.7), (0.3, 1), (-0.5, 1)]
        if kind == "bottle":
            body = [
                (-0.5, -1),
                (0.22, -1),
                (0.34, -0.45),
                (0.5, -0.42),
                (0.5, 0.42),
                (0.34, 0.45),
                (0.22, 1),
                (-0.5, 1),
            ]
        outline = doves.along(doves.chaikin(body, 1), (cx, cy), angle, length, radius)
        _shaded(
            rng,
            layer,
            outline,
            doves.Frame(cx, cy, length / 2, radius, angle),
            colour,
            light,
            texture=0.05,
            cylinder=True,
        )
        return [("polygon", outline)]
    if kind == "bag":
        rx, ry = length / 2, length / 2 * rng.uniform(0.6, 0.9)
        outline = doves.chaikin(doves.blob(rng, cx, cy, rx, ry, angle, 0.3, n=12), 2)
        _shaded(rng, layer, outline, doves.Frame(cx, cy, rx * 1.3, ry * 1.3, angle), colour, light, texture=0.12)
        return [("polygon", outline)]
    if kind == "disc":  # annotated as a labelme circle
        radius = length / 2
        _shaded(
            rng,
            layer,
            doves.ellipse(cx, cy, radius, radius, 0.0, 64),
            doves.Frame(cx, cy, radius, radius),
            colour,
            light,
            texture=0.08,
        )
        return [("circle", np.array([(cx, cy), (cx + radius, cy)]))]
    raise ValueError(f"unknown object kind {kind!r}")


def paint_dove(rng, layer: np.ndarray, cx: float, cy: float, length: float, light) -> list[tuple[str, np.ndarray]]:
    """A dove from the demo generator, its outline traced from what was painted."""
    h, w = layer.shape[:2]
    bird = doves.make_bird(rng, str(rng.choice(["standing", "alert", "pecking", "sitting"])))
    bird.scale = length / 1.5
    bird.mirror = bool(rng.random() < 0.5)
    bird.angle = math.radians(rng.uniform(-14, 14))
    bird.cx, bird.cy = cx, cy
    drawn = doves.render_bird(bird, h, w, light, rng)
    if drawn is None:
        return []
    window, rgb, silhouette = drawn
    region = layer[window]
    layer[window] = np.where(silhouette[..., None], rgb, region)
    full = np.zeros((h, w), dtype=bool)
    full[window] = silhouette
    return [("polygon", np.asarray(polygon)) for polygon in doves.trace_polygons(full, doves.MIN_REGION_PX)]


# ---------------------------------------------------------------------------------------------- the scene
def _scale_points(points: np.ndarray, scale: tuple[float, float], size: tuple[int, int]) -> list[list[float]]:
    """Working coordinates -> the photo's (pixel centres map to pixel centres), clipped to the photo, rounded
    to 1/100 px as labelme's JSON would hold them."""
    height, width = size
    x = np.clip((points[:, 0] + 0.5) * scale[0] - 0.5, 0, width - 1)
    y = np.clip((points[:, 1] + 0.5) * scale[1] - 0.5, 0, height - 1)
    return [[round(float(a), 2), round(float(b), 2)] for a, b in zip(x, y)]


def _shape(label: str, shape_type: str, points: list, group_id) -> dict:
    return {
        "label": label,
        "points": points,
        "group_id": group_id,
        "description": "",
        "shape_type": shape_type,
        "flags": {},
        "mask": None,
    }


def _upscale(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    image = doves.to_pil(rgb)
    if image.size != (width, height):
        image = image.resize((width, height), Image.BICUBIC)
    return np.asarray(image)


def _sensor_noise(rng, rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Add zero-mean noise in place, from a random tile repeated at a random offset: cheap at 12 MP, and to
    JPEG, which codes 8x8 blocks independently, as costly as noise that never repeats."""
    h, w = rgb.shape[:2]
    tile = np.rint(rng.normal(0.0, sigma, (NOISE_TILE, NOISE_TILE, 3)))
    dy, dx = (int(v) for v in rng.integers(0, NOISE_TILE, 2))
    across = (1, -(-(w + dx) // NOISE_TILE), 1)
    up = np.tile(np.roll(np.clip(tile, 0, 255).astype(np.uint8), -dy, axis=0), across)[:, dx : dx + w]
    down = np.tile(np.roll(np.clip(-tile, 0, 255).astype(np.uint8), -dy, axis=0), across)[:, dx : dx + w]
    up, down = np.ascontiguousarray(up), np.ascontiguousarray(down)
    for top in range(0, h, NOISE_TILE):  # whole rows: contiguous blocks, small temporaries
        rows = min(NOISE_TILE, h - top)
        block = rgb[top : top + rows]
        rgb[top : top + rows] = cv2.subtract(cv2.add(block, up[:rows]), down[:rows])  # saturating uint8
    return rgb


def render_photo(
    index: int,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    classes: int = MAX_CLASSES,
    rotated_share: float = ROTATED_SHARE,
) -> Photo:
    """One photo; ``size`` is (width, height) of the stored pixels, as a camera writes them."""
    names = class_names(classes)
    rng = np.random.default_rng([seed, index, size[0], size[1], classes])
    orientation = int(rng.choice(ORIENTATIONS, p=ORIENTATION_WEIGHTS)) if rng.random() < rotated_share else 1
    width, height = size if orientation in (1, 3) else size[::-1]  # as seen
    factor = min(1.0, WORK_SIDE / max(width, height))
    w0, h0 = max(8, round(width * factor)), max(8, round(height * factor))
    scale = (width / w0, height / h0)

    background = str(rng.choice(["grass", "pavement"], p=[0.45, 0.55]))
    ground, _ = doves.BACKGROUNDS[background](rng, h0, w0)
    ground = np.ascontiguousarray(ground, dtype=np.float64)
    lx, ly = rng.uniform(-0.6, 0.6), rng.uniform(-0.9, -0.35)
    norm = math.sqrt(lx * lx + ly * ly + 0.36)
    light = (lx / norm, ly / norm, 0.6 / norm)

    # Which objects: a Poisson count per class, at least one object per photo; painted back to front
    # (lower in the picture is nearer), each casting a soft shadow on the ground.
    entries = CATALOG[:classes]
    placed = [entry for entry in entries for _ in range(int(rng.poisson(entry.rate)))]
    if not placed:
        placed = [entries[int(rng.integers(0, len(entries)))]]
    short = min(w0, h0)
    items = [
        (entry, rng.uniform(0.05, 0.95) * w0, rng.uniform(0.08, 0.95) * h0, short * rng.uniform(*entry.size))
        for entry in placed
    ]
    items.sort(key=lambda item: item[2])
    layer = ground.copy()
    shapes, objects, painted = [], [], []
    for entry, cx, cy, length in items:
        shadow = doves.polygon_mask(
            doves.ellipse(cx + length * 0.05, cy + length * 0.08, length * 0.45, length * 0.3), h0, w0
        )
        doves.darken(ground, shadow, 0.25, max(1.0, length * 0.05))
        doves.darken(layer, shadow, 0.25, max(1.0, length * 0.05))
        if entry.kind == "dove":
            outlines = paint_dove(rng, layer, cx, cy - length * 0.2, length, light)
        else:
            outlines = paint_object(rng, layer, entry, cx, cy, length, light)
        if not outlines:
            continue
        group = len(objects) + 1 if len(outlines) > 1 else None
        for shape_type, points in outlines:
            shapes.append(_shape(entry.name, shape_type, _scale_points(points, scale, (height, width)), group))
            painted.append(len(objects) + 1)
        objects.append(entry.name)

    # Camera look at working size (exposure, white balance, vignetting), the same on both layers.
    gain = rng.uniform(0.9, 1.08) * (1.0 + rng.uniform(-0.04, 0.04, 3))
    gy, gx = np.mgrid[0:h0, 0:w0].astype(np.float64)
    vignette = 1.0 - rng.uniform(0.0, 0.15) * (((gx - w0 / 2) / (w0 / 2)) ** 2 + ((gy - h0 / 2) / (h0 / 2)) ** 2) / 2
    look = gain * vignette[..., None]
    ground_up = _upscale(ground * look, width, height)
    layer_up = _upscale(layer * look, width, height)

    # Full size: each object's colours exactly where labelme paints its polygon, later shapes on top.
    object_ids = shapes_to_label(
        (height, width), [{**shape, "label": str(k)} for shape, k in zip(shapes, painted)], int
    )
    ids = {name: k for k, name in enumerate(names)}
    class_of_object = np.zeros(256, np.uint8)
    class_of_object[1 : len(objects) + 1] = [ids[name] for name in objects]
    label = class_of_object[object_ids]
    rgb = np.where((object_ids > 0)[..., None], layer_up, ground_up)
    rgb = _sensor_noise(rng, rgb, rng.uniform(2.5, 4.0))
    return Photo(sample_name(index), rgb, shapes, label, orientation, int(rng.integers(88, 95)), names, objects)


# ------------------------------------------------------------------------------------------------- files
def write_photo(
    out_dir: Path,
    index: int,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    classes: int = MAX_CLASSES,
    rotated_share: float = ROTATED_SHARE,
) -> Photo:
    photo = render_photo(index, seed, size, classes, rotated_share)
    (out_dir / f"{photo.name}.jpg").write_bytes(encode_jpeg(photo))
    (out_dir / f"{photo.name}.json").write_text(doves.labelme_json_text(labelme_dict(photo)), encoding="utf-8")
    return photo


def write_multiclass_dataset(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    classes: int = MAX_CLASSES,
    rotated_share: float = ROTATED_SHARE,
    labels_file: str | Path | None = None,
    progress: bool = True,
) -> tuple[str, ...]:
    """Photos 0..count-1 into ``out_dir`` (created if needed; files of the same names are replaced) and the
    labels file (default ``out_dir/labels.txt``). Returns the labels file's class names (``_background_``
    first, ``__ignore__`` left out)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels_path = Path(labels_file) if labels_file is not None else out_dir / LABELS_NAME
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    labels_path.write_text(labels_text(classes), encoding="utf-8")
    for index in tqdm(range(count), desc="photos", unit="img", disable=not progress):
        write_photo(out_dir, index, seed, size, classes, rotated_share)
    return class_names(classes)


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 4032x3024, not {text!r}") from None
    if width < 8 or height < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, not {text!r}")
    return width, height


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; same-named files replaced)")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument(
        "--size",
        type=parse_size,
        default=DEFAULT_SIZE,
        help="WIDTHxHEIGHT of the stored pixels (default 4032x3024, 12 MP)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--classes",
        type=int,
        default=MAX_CLASSES,
        help=f"classes in the labels file, common ones first (1..{MAX_CLASSES})",
    )
    parser.add_argument(
        "--rotated-share",
        type=float,
        default=ROTATED_SHARE,
        help="share of photos stored sideways with an EXIF Orientation tag",
    )
    parser.add_argument("--labels", type=Path, help="where to write the labels file (default OUT/labels.txt)")
    args = parser.parse_args(argv)
    if not 1 <= args.classes <= MAX_CLASSES:
        parser.error(f"--classes must be 1..{MAX_CLASSES}")
    started = time.perf_counter()
    names = write_multiclass_dataset(
        args.out, args.count, args.seed, args.size, args.classes, args.rotated_share, args.labels
    )
    seconds = time.perf_counter() - started
    present: dict[str, int] = {}
    for index in range(args.count):
        document = json.loads((args.out / f"{sample_name(index)}.json").read_text(encoding="utf-8"))
        for label in {shape["label"] for shape in document["shapes"]}:
            present[label] = present.get(label, 0) + 1
    jpegs = [args.out / f"{sample_name(index)}.jpg" for index in range(args.count)]
    print(
        json.dumps(
            {
                "images": args.count,
                "size": "x".join(map(str, args.size)),
                "seconds": round(seconds, 1),
                "megabytes": round(sum(path.stat().st_size for path in jpegs) / 1e6, 2),
                "labels_file": str(args.labels or args.out / LABELS_NAME),
                "classes": len(names) - 1,
                "photos_per_class": {name: present.get(name, 0) for name in names[1:]},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
