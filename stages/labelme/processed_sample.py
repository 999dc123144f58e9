"""One labelme annotation converted into a processed sample folder, ``<processed_dir>/<json stem>/``: the image
as seen (RGB, EXIF orientation applied), ``label.png`` (P-mode class ids, 255 = __ignore__) and
``label_viz.png`` (stages.labelme.label_viz), plus its entry in the manifest.

The image is ``img.jpg`` when the photo is a JPEG: its bytes as they are when no EXIF rotation is needed
(labelme does the same), else the rotated pixels re-encoded with the photo's own quantisation tables (no
Orientation tag, which OpenCV would apply again). Any other format becomes a lossless ``img.png``.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin

from stages.data.images import save_label_png
from stages.data.labels import IGNORE_INDEX, IGNORE_NAME, Labels
from stages.data.split_lists import IMAGE_JPEG, IMAGE_PNG
from stages.labelme.annotations import Annotation, read_annotation
from stages.labelme.label_viz import LABEL_VIZ_MAX_SIDE, LABEL_VIZ_PNG_OPTIONS, label_viz, viz_pair
from stages.labelme.shapes import shapes_to_label

# img.png (photos that are not JPEGs): after PNG's row filters, LZ77 finds little in photos, so run-length
# coding is ~5x faster than Pillow's default (level 6) for files 5-15% larger, often smaller. Still lossless.
PHOTO_PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}


@dataclass(frozen=True)
class SampleSettings:
    """What each worker needs; small, so it pickles cheaply into the process pool."""

    raw_dir: Path
    labels_file: str
    labels: Labels
    max_image_pixels: int


def convert_one(json_path: Path, settings: SampleSettings, out_dir: Path | None) -> tuple[str, list[str], dict | None]:
    """Read, validate and (when out_dir is given) convert one annotation: (source, problems, manifest entry)."""
    annotation, problems = read_annotation(
        json_path,
        settings.raw_dir,
        settings.labels,
        settings.labels_file,
        settings.max_image_pixels,
        jpeg_draft_side=LABEL_VIZ_MAX_SIDE * 3 // 4,
    )
    source = json_path.relative_to(settings.raw_dir).as_posix()
    if annotation is None:
        return source, problems, None
    try:
        label = shapes_to_label(annotation.size, annotation.shapes, settings.labels.id_of)
    except ValueError as err:  # e.g. a mask that does not fit its bounding box
        return source, [f"cannot rasterise the shapes ({err})"], None
    if out_dir is None:
        return source, [], None

    counts = class_counts(label)
    sample_dir = out_dir / json_path.stem
    sample_dir.mkdir()
    try:
        image_file = write_image(sample_dir, annotation)
    except (OSError, ValueError, SyntaxError) as err:  # its full decode failed where the reduced one did not
        return source, [f"image {annotation.image_source} is corrupt ({type(err).__name__}: {err})"], None
    save_label_png(sample_dir / "label.png", label)
    viz = label_viz(*viz_pair(annotation.rgb, label), settings.labels, present=np.flatnonzero(counts))
    viz.save(sample_dir / "label_viz.png", **LABEL_VIZ_PNG_OPTIONS)

    return (
        source,
        [],
        {
            "stem": json_path.stem,
            "json": source,
            "image": annotation.image_source,
            "image_file": image_file,  # img.jpg or img.png, in <stem>/
            "size": list(annotation.size),  # height, width
            "class_pixels": {
                name: int(counts[class_id(settings.labels, name)]) for name in pixel_names(settings.labels)
            },
            "label_sha256": hashlib.sha256(label).hexdigest(),
        },
    )


def write_image(sample_dir: Path, annotation: Annotation) -> str:
    """The image as seen, into sample_dir; returns its file name (img.jpg or img.png)."""
    if annotation.jpeg_kept:  # already as seen: the photo's own bytes
        (sample_dir / IMAGE_JPEG).write_bytes(annotation.encoded)
        return IMAGE_JPEG
    if annotation.full_size is not None:  # a JPEG rotated by EXIF (or CMYK, grey): re-encoded as its camera did
        with Image.open(io.BytesIO(annotation.encoded)) as source:
            tables = {"qtables": source.quantization, "subsampling": JpegImagePlugin.get_sampling(source)}
            if tables["subsampling"] == -1:  # not a 3-channel YCbCr layout: Pillow's default then
                del tables["subsampling"]
            image = ImageOps.exif_transpose(source)  # decoded whole here, once; Pillow all the way (no arrays)
            (image if image.mode == "RGB" else image.convert("RGB")).save(
                sample_dir / IMAGE_JPEG, format="JPEG", **tables
            )
        return IMAGE_JPEG
    Image.fromarray(annotation.rgb).save(sample_dir / IMAGE_PNG, **PHOTO_PNG_OPTIONS)
    return IMAGE_PNG


def class_counts(label: np.ndarray) -> np.ndarray:
    """Pixels per class id (256 bins): Pillow's histogram, one pass in C (np.bincount first casts every
    pixel to int64: ~10x slower on a 12 MP label)."""
    return np.array(Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="L").histogram(), np.int64)


def pixel_names(labels: Labels) -> list[str]:
    return [*labels.names, IGNORE_NAME]


def class_id(labels: Labels, name: str) -> int:
    return IGNORE_INDEX if name == IGNORE_NAME else labels.names.index(name)
