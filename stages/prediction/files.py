"""Prediction files in PaddleSeg's conventions, and the photos of a folder to predict.

Per model folder: ``class_id/<name>.png`` (P-mode class ids, labelme/VOC palette, the format of label.png),
``pseudo_color_prediction/<name>.png`` (the classes in that palette) and ``added_prediction/<name>.jpg``
(the photo blended with them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.config import StageError
from stages.data.images import colorize_label, read_rgb, save_label_png, save_rgb_png

CLASS_ID_DIR = "class_id"
PSEUDO_COLOR_DIR = "pseudo_color_prediction"
OVERLAY_DIR = "added_prediction"
METRICS_NAME = "metrics.json"  # predict's scores of the test split, per model folder
SUMMARY_NAME = "summary.json"  # predict's folder mode: what was predicted and skipped
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def overlay(rgb: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """PaddleSeg's added_prediction: the photo weighted 1-alpha plus the class colours weighted alpha.

    Blended 256 rows at a time: float copies of a whole 12 MP photo would take ~0.5 GB."""
    out = np.empty_like(rgb, dtype=np.uint8)
    for top in range(0, rgb.shape[0], 256):
        rows = slice(top, top + 256)
        blended = rgb[rows].astype(np.float32) * (1.0 - alpha) + colour[rows].astype(np.float32) * alpha
        out[rows] = np.clip(np.rint(blended), 0, 255)
    return out


def write_prediction(out_dir: Path, name: str, rgb: np.ndarray, mask: np.ndarray, alpha: float) -> None:
    class_id_path = out_dir / CLASS_ID_DIR / f"{name}.png"
    colour_path = out_dir / PSEUDO_COLOR_DIR / f"{name}.png"
    overlay_path = out_dir / OVERLAY_DIR / f"{name}.jpg"
    for path in (class_id_path, colour_path, overlay_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    save_label_png(class_id_path, mask)
    colour = colorize_label(mask)
    save_rgb_png(colour_path, colour)
    # Overlays are only for looking at: as JPEG they take a fraction of a PNG's size on photos.
    Image.fromarray(overlay(rgb, colour, alpha)).save(overlay_path, quality=90)


def list_images(input_dir: Path, skip_dir: Path | None = None) -> list[Path]:
    """Image files under input_dir (recursively, hidden ones left out), sorted; skip_dir's files excluded."""
    skip = skip_dir.resolve() if skip_dir is not None else None
    found = []
    for path in sorted(input_dir.rglob("*")):
        relative = path.relative_to(input_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return found


def output_names(input_dir: Path, files: list[Path]) -> list[str]:
    """Each file's output name: its path under input_dir without the suffix (refusing two that clash)."""
    names = [path.relative_to(input_dir).with_suffix("").as_posix() for path in files]
    seen: dict[str, Path] = {}
    clashes = []
    for name, path in zip(names, files):
        if name in seen:
            clashes.append(f"{seen[name].name} and {path.name}")
        seen.setdefault(name, path)
    if clashes:
        raise StageError(
            f"{input_dir}: photos whose names differ only by suffix would overwrite each "
            f"other's predictions: {'; '.join(clashes)}; rename one of each pair"
        )
    return names


def read_photo(path: Path) -> np.ndarray | str:
    """The photo as RGB (EXIF orientation applied), or the reason it cannot be read."""
    try:
        return read_rgb(path)
    except Exception as err:  # noqa: BLE001 - any decoder failure means "skip this one photo"
        return f"{type(err).__name__}: {err}"
