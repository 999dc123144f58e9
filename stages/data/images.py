"""Image and label-PNG I/O shared by the stages: RGB photos in, P-mode class-id PNGs out."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import imgviz
import numpy as np
from PIL import Image

# labelme/VOC palette: class id i is drawn in colour i, 255 (ignore) in the palette's last colour.
VOC_PALETTE = imgviz.label_colormap().astype(np.uint8)  # 256 colours (imgviz 1.x and 2.x)
# Label PNGs are long runs of one id: run-length coding writes a 12 MP label in ~half the time of Pillow's
# default (zlib level 6), and smaller.
LABEL_PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
EXIF_ORIENTATION = 0x0112


# EXIF Orientation -> what shows the stored pixels as seen: ImageOps.exif_transpose's transpositions, done by
# OpenCV on the array (a 12 MP quarter turn: ~25 ms against Pillow's ~250 ms).
ORIENT = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image (RGBA, LA, L, P, I;16, I, F, CMYK...) as an HxWx3 uint8 RGB array, EXIF-oriented.

    Alpha is dropped (labelme shows the colour channels). 16/32-bit greyscale is scaled to 8 bits by
    its type's range, not clipped, so a 16-bit photo keeps its contrast.
    """
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    rgb = _unoriented_rgb(image)
    return ORIENT[orientation](rgb) if orientation in ORIENT else rgb


def _unoriented_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image).astype(np.float64) / 65535.0 * 255.0
        return np.repeat(np.round(array).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode in ("I", "F"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        array = np.clip(array / top * 255.0, 0, 255)
        return np.repeat(np.round(array).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def read_rgb(path: str | Path, at_least: tuple[int, int] | None = None) -> np.ndarray:
    """The image as seen (RGB, EXIF-oriented). With ``at_least`` (width, height), a JPEG may come out smaller
    than stored but at least that size: decoded at a reduced scale by JPEG's DCT scaling, several times
    faster for a photo that is about to be shrunk anyway."""
    with Image.open(path) as image:
        if at_least is not None and image.format == "JPEG":
            width, height = at_least
            if image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8):  # the stored pixels are sideways
                width, height = height, width
            image.draft("RGB", (int(width), int(height)))
        return to_rgb(image)


def save_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    # run-length coded, as label PNGs: a 12 MP picture of flat class colours in a fraction of zlib's time
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(path, **LABEL_PNG_OPTIONS)


def save_label_png(path, label: np.ndarray) -> None:
    """Save class ids (0..254, 255 = ignore) as a P-mode PNG with the labelme/VOC palette, to a path or a
    binary file (the served model's answer)."""
    label = np.asarray(label)
    if label.ndim != 2 or label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"label must be 2-D with ids in 0..255, got shape {label.shape}")
    image = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="P")
    image.putpalette(VOC_PALETTE.flatten().tolist())
    image.save(path, format="PNG", **LABEL_PNG_OPTIONS)


def read_label_png(path: str | Path) -> np.ndarray:
    """Class ids of a P- or L-mode label PNG as an HxW uint8 array."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: label PNG must be P or L mode, not {image.mode}")
        return np.asarray(image, dtype=np.uint8)


def colorize_label(label: np.ndarray) -> np.ndarray:
    """Class ids as an RGB picture in the VOC palette (PaddleSeg's pseudo-colour convention)."""
    return VOC_PALETTE[np.asarray(label, dtype=np.uint8)]
