"""Reading and validating labelme annotations: the JSON, its shapes against the labels file, and its image.

Nothing here writes anything. ``read_annotation`` returns either a usable annotation or the list of
every problem it found in that file, so a stage can report all bad files at once.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from stages.data.images import to_rgb
from stages.data.labels import Labels
from stages.labelme.shapes import shape_problems

EMBEDDED_IMAGE = "imageData"  # what Annotation.image_source says when the image is embedded in the JSON
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Annotation:
    source: str  # the JSON's path relative to raw_dir (POSIX separators)
    image_source: str  # the image's path relative to raw_dir, or EMBEDDED_IMAGE
    shapes: list[dict]
    rgb: np.ndarray  # HxWx3 uint8, EXIF orientation applied; smaller than `size` when `reduced`
    encoded: bytes = b""  # the image as stored (the file's bytes, or imageData decoded)
    full_size: tuple[int, int] | None = None  # (height, width) as seen, when rgb is a reduced decode
    jpeg_kept: bool = False  # an RGB JPEG already as seen (no EXIF rotation): its bytes serve as they are

    @property
    def size(self) -> tuple[int, int]:
        return self.full_size or (self.rgb.shape[0], self.rgb.shape[1])

    @property
    def reduced(self) -> bool:
        return self.full_size is not None and self.full_size != self.rgb.shape[:2]


def find_annotation_files(raw_dir: str | Path) -> list[Path]:
    """Every labelme JSON under raw_dir, subfolders included, in a stable order.

    Hidden files and folders (editor backups, .ipynb_checkpoints...) are skipped.
    """
    raw_dir = Path(raw_dir)
    found = [
        path
        for path in raw_dir.rglob("*")
        if path.suffix.lower() == ".json"
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(raw_dir).parts)
    ]
    return sorted(found, key=lambda path: path.relative_to(raw_dir).as_posix())


def read_annotation(
    json_path: str | Path,
    raw_dir: str | Path,
    labels: Labels,
    labels_file: str,
    max_image_pixels: int,
    jpeg_draft_side: int | None = None,
) -> tuple[Annotation | None, list[str]]:
    """Parse, validate and decode one annotation. Returns (annotation, []) or (None, problems).

    With ``jpeg_draft_side``, a JPEG is decoded only at a reduced scale whose long side is at least that many
    pixels (JPEG's DCT scaling: the whole stream is still decoded, so a corrupt or cut-short file is still
    found, in a fraction of the time); ``full_size`` then holds its size, and ``jpeg_kept`` says whether its
    bytes serve as the image as they are.
    """
    json_path, raw_dir = Path(json_path), Path(raw_dir)
    source = json_path.relative_to(raw_dir).as_posix()
    try:
        document = json.loads(json_path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        return None, [f"invalid JSON ({err})"]
    except OSError as err:
        return None, [f"cannot read the file ({err.strerror or err})"]
    if not isinstance(document, dict):
        return None, [f"not a labelme annotation: the JSON is a {type(document).__name__}, not an object"]

    problems = _shapes_problems(document, labels, labels_file)
    image_source, image_bytes, image_problems = _image_bytes(document, json_path, raw_dir)
    problems += image_problems
    rgb, full_size, kept = None, None, False
    if image_bytes is not None:
        rgb, full_size, kept, decode_problems = _decode_image(
            image_bytes, image_source, max_image_pixels, jpeg_draft_side
        )
        problems += decode_problems
    if rgb is not None:
        problems += _declared_size_problems(document, full_size or rgb.shape[:2])
    if problems:
        return None, problems
    return Annotation(source, image_source, document["shapes"], rgb, image_bytes, full_size, kept), []


def _shapes_problems(document: dict, labels: Labels, labels_file: str) -> list[str]:
    if "shapes" not in document:
        return ["missing the 'shapes' key"]
    shapes = document["shapes"]
    if not isinstance(shapes, list):
        return [f"'shapes' must be a list, not a {type(shapes).__name__}"]
    problems = []
    for index, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            problems.append(f"shape {index}: not a JSON object")
            continue
        label = shape.get("label")
        where = f"shape {index} ({label!r})" if isinstance(label, str) else f"shape {index}"
        problems += [f"{where}: {phrase}" for phrase in shape_problems(shape)]
        if isinstance(label, str) and labels.id_of(label) is None:
            problems.append(f"{where}: label {label!r} is not in the labels file {labels_file}")
    return problems


def _image_bytes(document: dict, json_path: Path, raw_dir: Path) -> tuple[str, bytes | None, list[str]]:
    """(image_source, encoded bytes, problems). Embedded imageData wins over imagePath, as in labelme."""
    image_data = document.get("imageData")
    if image_data:
        if not isinstance(image_data, str):
            return EMBEDDED_IMAGE, None, [f"imageData must be a base64 string, not a {type(image_data).__name__}"]
        try:
            return EMBEDDED_IMAGE, base64.b64decode(image_data), []
        except (binascii.Error, ValueError) as err:
            return EMBEDDED_IMAGE, None, [f"imageData is not valid base64 ({err})"]

    image_path = document.get("imagePath")
    if not isinstance(image_path, str) or not image_path.strip():
        return "", None, ["no image: imageData is empty and imagePath is missing"]
    path, problem = resolve_image_path(image_path, json_path.parent, raw_dir)
    if problem:
        return image_path, None, [problem]
    image_source = path.relative_to(Path(os.path.abspath(raw_dir))).as_posix()
    try:
        return image_source, path.read_bytes(), []
    except FileNotFoundError:
        return image_source, None, [f"image file not found: imagePath '{image_path}' -> {raw_dir / image_source}"]
    except OSError as err:
        return image_source, None, [f"cannot read image {raw_dir / image_source} ({err.strerror or err})"]


def resolve_image_path(image_path: str, json_dir: str | Path, raw_dir: str | Path) -> tuple[Path | None, str | None]:
    """The absolute path of a labelme imagePath, or a problem when it is absolute or leaves raw_dir.

    labelme writes Windows paths with backslashes; like labelme, read them as Windows paths. The
    containment check is lexical (no symlink resolution) so that DVC's symlinked cache still works.
    """
    as_windows = PureWindowsPath(image_path)
    if as_windows.anchor or PurePosixPath(image_path).is_absolute():
        return None, f"imagePath '{image_path}' is absolute; it must be relative to the JSON's folder"
    path = Path(os.path.abspath(Path(json_dir) / as_windows.as_posix()))
    if not path.is_relative_to(os.path.abspath(raw_dir)):
        return None, f"imagePath '{image_path}' points outside the raw data folder {raw_dir}; refused"
    return path, None


def _decode_image(
    data: bytes, image_source: str, max_image_pixels: int, jpeg_draft_side: int | None = None
) -> tuple[np.ndarray | None, tuple[int, int] | None, bool, list[str]]:
    """Check the header's size against the pixel limit, then decode once to EXIF-oriented RGB.

    Returns (rgb, full_size, jpeg_kept, problems) (see read_annotation: full_size is set, as seen, when a
    JPEG was decoded at a reduced scale)."""
    what = "imageData" if image_source == EMBEDDED_IMAGE else f"image {image_source}"
    too_big = (
        f"{what} is too large: {{}} pixels, over convert_json.max_image_pixels={max_image_pixels} "
        "(decompression bomb guard)"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return None, None, False, [f"{what} refused by Pillow as a decompression bomb ({err})"]
    except UnidentifiedImageError:
        return None, None, False, [f"{what} is not a readable image (unknown format, or a cut-short or corrupt header)"]
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on garbage (SyntaxError, struct.error...)
        return None, None, False, [f"{what} is not a readable image ({type(err).__name__}: {err})"]
    with image:
        width, height = image.size
        if width * height > max_image_pixels:
            return None, None, False, [too_big.format(width * height)]
        full_size, kept = None, False
        if jpeg_draft_side and image.format in ("JPEG", "MPO"):
            kept = keeps_as_jpeg(image)
            sideways = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
            full_size = (width, height) if sideways else (height, width)
            scale = min(1.0, jpeg_draft_side / max(width, height))
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return to_rgb(image), full_size, kept, []
        except Exception as err:  # noqa: BLE001 - truncated or corrupt data: OSError, ValueError, SyntaxError...
            return None, None, False, [f"{what} is corrupt ({type(err).__name__}: {err})"]


def keeps_as_jpeg(image: Image.Image) -> bool:
    """An RGB (YCbCr) JPEG whose pixels are already as seen: no EXIF rotation or mirroring to apply."""
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return image.format == "JPEG" and image.mode == "RGB" and orientation not in range(2, 9)


def _declared_size_problems(document: dict, actual: tuple[int, int]) -> list[str]:
    problems = []
    for key, value in (("imageHeight", actual[0]), ("imageWidth", actual[1])):
        declared = document.get(key)
        if declared is not None and declared != value:
            problems.append(
                f"{key} is {declared!r} but the image (EXIF-oriented) is {actual[0]}x{actual[1]} (height x width)"
            )
    return problems
