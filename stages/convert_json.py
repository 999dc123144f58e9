"""convert_json: labelme JSON + photos -> per-sample image and label PNGs, class_names.txt, manifest.json.

For every annotation under data.raw_dir this writes ``<processed_dir>/<json stem>/`` with the image as
seen (RGB, EXIF orientation applied), ``label.png`` (P-mode class ids, 255 = __ignore__) and
``label_viz.png``. Class ids come from the labels file only, so they are the same for every file.

The image is ``img.jpg`` when the photo is a JPEG: its bytes as they are when no EXIF rotation is needed
(labelme does the same), else the rotated pixels re-encoded with the photo's own quantisation tables (no
Orientation tag, which OpenCV would apply again). Any other format becomes a lossless ``img.png``. The
manifest and build_splits' lists name the file. label_viz.png is a picture for people: at most
LABEL_VIZ_MAX_SIDE pixels on its long side (labelme2voc's picture of the photo and label scaled down).

One parallel pass reads, validates and converts each file into a staging folder beside
processed_dir (each image is decoded once). If any file is bad, the staging folder is discarded and
the run fails listing every problem in every file; processed_dir is only replaced, in one rename,
when all files converted.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import multiprocessing
import os
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import imgviz
import numpy as np
from omegaconf import DictConfig
from PIL import Image, ImageOps, JpegImagePlugin
from tqdm import tqdm

from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir, write_json_atomic, write_text_atomic
from stages.data.images import VOC_PALETTE, save_label_png
from stages.data.labels import IGNORE_INDEX, IGNORE_NAME, Labels, read_labels
from stages.data.split_lists import IMAGE_JPEG, IMAGE_PNG
from stages.labelme.annotations import Annotation, find_annotation_files, read_annotation
from stages.labelme.shapes import shapes_to_label

CLASS_NAMES_FILE = "class_names.txt"
MANIFEST_FILE = "manifest.json"
# img.png (photos that are not JPEGs): after PNG's row filters, LZ77 finds little in photos, so run-length
# coding is ~5x faster than Pillow's default (level 6) for files 5-15% larger, often smaller. Still lossless.
PHOTO_PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}
# label_viz.png's long side at most: a screen's worth, with the legend still legible. A 12 MP picture
# would take ~8 MB and ~2 s to write, more than the photo itself, for nothing a person would see.
LABEL_VIZ_MAX_SIDE = 1024
# zlib level 3 writes it ~30% smaller than run-length coding (~0.2-0.4 MB, next to a 1-3 MB photo kept as
# it is) for ~15 ms more; the default level 6 saves 5% more in twice the time.
LABEL_VIZ_PNG_OPTIONS = {"compress_level": 3}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@dataclass(frozen=True)
class Settings:
    """What each worker needs; small, so it pickles cheaply into the process pool."""

    raw_dir: Path
    labels_file: str
    labels: Labels
    max_image_pixels: int


def run(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    raw_dir, processed_dir = Path(cfg.data.raw_dir), Path(cfg.data.processed_dir)
    labels = read_labels(cfg.data.labels)
    if not raw_dir.is_dir():
        raise StageError(f"{raw_dir}: raw data folder not found (data.raw_dir)")
    json_paths = find_annotation_files(raw_dir)
    if not json_paths:
        raise StageError(f"{raw_dir}: no labelme JSON files found (data.raw_dir), subfolders included")
    settings = Settings(raw_dir, str(cfg.data.labels), labels, int(cfg.convert_json.max_image_pixels))
    workers = _worker_count(int(cfg.convert_json.workers), len(json_paths))

    problems = output_folder_problems(json_paths, raw_dir)
    with atomic_dir(processed_dir) as staging:
        # Colliding stems would overwrite each other's folder, so then only validate.
        out_dir = None if problems else staging
        convert = functools.partial(convert_one, settings=settings, out_dir=out_dir)
        samples = []
        for source, sample_problems, sample in _parallel_map(convert, json_paths, workers):
            problems[source] += sample_problems
            samples.append(sample)
        if any(problems.values()):
            raise StageError(_problems_message(problems, raw_dir, len(json_paths)))

        write_text_atomic(staging / CLASS_NAMES_FILE, "\n".join(labels.names) + "\n")
        write_json_atomic(
            staging / MANIFEST_FILE,
            {
                "raw_dir": str(raw_dir),
                "labels": str(cfg.data.labels),
                "class_names": list(labels.names),
                "ignore_index": IGNORE_INDEX,
                "samples": samples,
            },
        )

    class_pixels = {name: sum(s["class_pixels"][name] for s in samples) for name in _pixel_names(labels)}
    return {
        "samples": len(samples),
        "processed_dir": str(processed_dir),
        "class_pixels": class_pixels,
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 3),
    }


def output_folder_problems(json_paths: list[Path], raw_dir: Path) -> defaultdict[str, list[str]]:
    """Problems (by JSON source) of annotations whose output folder another one also claims.

    Stems are compared case-insensitively: on Windows and macOS ``A`` and ``a`` are one folder.
    """
    problems: defaultdict[str, list[str]] = defaultdict(list)
    by_folder: defaultdict[str, list[str]] = defaultdict(list)
    reserved = {CLASS_NAMES_FILE, MANIFEST_FILE}
    for path in json_paths:
        source = path.relative_to(raw_dir).as_posix()
        by_folder[path.stem.casefold()].append(source)
        if path.stem.casefold() in reserved:
            problems[source].append(
                f"its output folder name {path.stem!r} clashes with the stage's own {path.stem} file; rename the JSON"
            )
    for sources in by_folder.values():
        for source in sources if len(sources) > 1 else ():
            others = ", ".join(other for other in sources if other != source)
            problems[source].append(
                f"writes the same output folder as {others} (folders are named after "
                f"the JSON file name, compared case-insensitively); rename one"
            )
    return problems


def convert_one(json_path: Path, settings: Settings, out_dir: Path | None) -> tuple[str, list[str], dict | None]:
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
                name: int(counts[_class_id(settings.labels, name)]) for name in _pixel_names(settings.labels)
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


def viz_pair(rgb: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Photo and label at label_viz's size (long side at most LABEL_VIZ_MAX_SIDE); ``rgb`` may already be
    smaller than the label (a JPEG decoded at a reduced scale, at least 3/4 of that size: a 12 MP photo's
    1/4 scale, 1008 px)."""
    height, width = label.shape
    scale = min(1.0, LABEL_VIZ_MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if rgb.shape[:2] != (size[1], size[0]):
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR, reducing_gap=1.0))  # box-reduce first
    if label.shape != (size[1], size[0]):
        label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
    return rgb, label


def label_viz(rgb: np.ndarray, label: np.ndarray, labels: Labels, present: Iterable[int] | None = None) -> Image.Image:
    """labelme2voc's picture: the label's colours over the greyed photo, with a legend of the classes present.

    Pixel for pixel what labelme2voc draws, ``imgviz.label2rgb(label, imgviz.rgb2gray(rgb),
    label_names=..., font_size=15, loc="rb")``, but blended by table lookup: imgviz blends in float64,
    which took as long as everything else here together.
    """
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    viz = Image.fromarray(np.take(_VIZ_BLEND, (label.astype(np.intp) << 8) | grey, axis=0))
    present = np.unique(label) if present is None else present
    names = dict(enumerate(labels.names)) | {IGNORE_INDEX: IGNORE_NAME}
    imgviz.components.legend_(viz, items=[(names[i], VOC_PALETTE[i]) for i in present], font_size=15, loc="rb")
    return viz


def _viz_blend_table() -> np.ndarray:
    """Row (class id * 256 + grey): the RGB of half the class colour plus half the grey, rounded half to
    even as imgviz's float blend rounds."""
    total = np.arange(256, dtype=np.uint16)[None, :, None] + VOC_PALETTE.astype(np.uint16)[:, None, :]
    half = total >> 1
    return (half + (total & half & 1)).astype(np.uint8).reshape(-1, 3)


_VIZ_BLEND = _viz_blend_table()


def _pixel_names(labels: Labels) -> list[str]:
    return [*labels.names, IGNORE_NAME]


def _class_id(labels: Labels, name: str) -> int:
    return IGNORE_INDEX if name == IGNORE_NAME else labels.names.index(name)


def _worker_count(configured: int, jobs: int) -> int:
    workers = configured if configured > 0 else (os.cpu_count() or 1)
    return max(1, min(workers, jobs))


def _parallel_map(func: Callable, items: list, workers: int) -> Iterator:
    """func over items, in order, on a process pool (in this process when workers == 1), with a progress bar."""
    progress = functools.partial(tqdm, total=len(items), desc="convert_json", unit="img")
    if workers == 1:
        yield from progress(map(func, items))
        return
    chunksize = max(1, len(items) // (workers * 8))  # few round trips, still balanced
    with multiprocessing.Pool(workers, initializer=_keep_freed_memory) as pool:
        yield from progress(pool.imap(func, items, chunksize=chunksize))


def _keep_freed_memory() -> None:
    """In a worker: have glibc's malloc serve big buffers from its heap and keep them when freed. By default
    each 12-48 MB buffer of a phone photo is mmapped and handed back to the kernel, so every photo pays
    ~30,000 page faults again: a third of the CPU time (measured: 596 -> 347 ms a photo). A no-op without
    glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def _problems_message(problems: dict[str, list[str]], raw_dir: Path, total: int) -> str:
    bad = {source: found for source, found in sorted(problems.items()) if found}
    count = sum(len(found) for found in bad.values())
    lines = [f"convert_json: {count} problem(s) in {len(bad)} of {total} annotation file(s); nothing was written"]
    for source, found in bad.items():
        lines += [f"  {raw_dir / source}: {problem}" for problem in found]
    return "\n".join(lines)


if __name__ == "__main__":
    stage_main(run)
