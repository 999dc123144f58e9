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

The pieces live in stages.labelme: one annotation to one sample folder (``processed_sample``), its
label_viz.png (``label_viz``), and the folder's conversion on a process pool (``conversion``).
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir, write_json_atomic, write_text_atomic
from stages.data.labels import IGNORE_INDEX, read_labels
from stages.labelme.annotations import find_annotation_files
from stages.labelme.conversion import (
    CLASS_NAMES_FILE,
    MANIFEST_FILE,
    convert_all,
    output_folder_problems,
    problems_message,
    worker_count,
)
from stages.labelme.processed_sample import SampleSettings, pixel_names


def run(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    raw_dir, processed_dir = Path(cfg.data.raw_dir), Path(cfg.data.processed_dir)
    labels = read_labels(cfg.data.labels)
    if not raw_dir.is_dir():
        raise StageError(f"{raw_dir}: raw data folder not found (data.raw_dir)")
    json_paths = find_annotation_files(raw_dir)
    if not json_paths:
        raise StageError(f"{raw_dir}: no labelme JSON files found (data.raw_dir), subfolders included")
    settings = SampleSettings(raw_dir, str(cfg.data.labels), labels, int(cfg.convert_json.max_image_pixels))
    workers = worker_count(int(cfg.convert_json.workers), len(json_paths))

    problems = output_folder_problems(json_paths, raw_dir)
    with atomic_dir(processed_dir) as staging:
        # Colliding stems would overwrite each other's folder, so then only validate.
        samples = convert_all(json_paths, settings, None if problems else staging, workers, problems)
        if any(problems.values()):
            raise StageError(problems_message(problems, raw_dir, len(json_paths)))

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

    class_pixels = {name: sum(s["class_pixels"][name] for s in samples) for name in pixel_names(labels)}
    return {
        "samples": len(samples),
        "processed_dir": str(processed_dir),
        "class_pixels": class_pixels,
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 3),
    }


if __name__ == "__main__":
    stage_main(run)
