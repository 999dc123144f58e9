"""Benchmark convert_json against labelme's own conversion path, and check both give the same labels.

labelme's path is what a user would otherwise script: labelme.LabelFile, labelme.utils.shapes_to_label,
labelme.utils.lblsave and a PIL PNG save of the image, one file after another in one process. The
stage also writes label_viz.png, class_names.txt and the manifest, and validates every file first.

    .venv/bin/python bench/convert.py                 # the demo set, data/raw
    .venv/bin/python bench/convert.py --workers 2 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from stages import convert_json  # noqa: E402
from stages.common.config import load_params  # noqa: E402
from stages.data.images import read_label_png, read_rgb  # noqa: E402
from stages.data.labels import IGNORE_INDEX, IGNORE_NAME, read_labels  # noqa: E402
from stages.data.split_lists import image_file_names  # noqa: E402
from stages.labelme.annotations import find_annotation_files  # noqa: E402


def labelme_conversion(json_paths: list[Path], class_ids: dict[str, int], out_dir: Path) -> None:
    import labelme
    import labelme.utils

    for json_path in json_paths:
        label_file = labelme.LabelFile(str(json_path))
        image = labelme.utils.img_data_to_arr(label_file.image_data)
        label, _ = labelme.utils.shapes_to_label(image.shape, label_file.shapes, class_ids)
        sample_dir = out_dir / json_path.stem
        sample_dir.mkdir(parents=True)
        Image.fromarray(image).save(sample_dir / "img.png")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # lblsave moved to imgviz; same code
            labelme.utils.lblsave(str(sample_dir / "label.png"), label.astype(np.uint8))


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the stage's pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_time(function, repeat: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the fastest of `repeat` runs."""
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), cpu_seconds()
        function()
        runs.append((time.perf_counter() - wall, cpu_seconds() - cpu))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--labels", default="data/labels.txt")
    parser.add_argument("--workers", type=int, default=0, help="convert_json.workers (0: one per core)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best time counts")
    args = parser.parse_args()

    json_paths = find_annotation_files(args.raw)
    if not json_paths:
        sys.exit(f"no labelme JSON under {args.raw}")
    raw_bytes = sum(path.stat().st_size for path in Path(args.raw).rglob("*") if path.is_file())
    labels = read_labels(args.labels)
    class_ids = {name: index for index, name in enumerate(labels.names)} | {IGNORE_NAME: IGNORE_INDEX}
    import labelme.utils  # noqa: F401  (imported before timing: PyQt5 and onnxruntime take seconds)
    from loguru import logger

    logger.disable("labelme")  # one debug line per image otherwise

    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp_name:
        tmp = Path(tmp_name)
        ours_dir = tmp / "ours"
        cfg = load_params(
            [
                f"data.raw_dir={args.raw}",
                f"data.labels={args.labels}",
                f"data.processed_dir={ours_dir}",
                f"convert_json.workers={args.workers}",
            ],
            REPO_ROOT,
        )

        def run_labelme():
            theirs = tmp / "labelme"
            shutil.rmtree(theirs, ignore_errors=True)
            labelme_conversion(json_paths, class_ids, theirs)

        result = {}

        def run_ours():
            result.update(convert_json.run(cfg))

        labelme_wall, labelme_cpu = best_time(run_labelme, args.repeat)
        ours_wall, ours_cpu = best_time(run_ours, args.repeat)

        def differ(name: str, read, ours_name=None) -> list[str]:
            return [
                path.stem
                for path in json_paths
                if not np.array_equal(
                    read(ours_dir / path.stem / (ours_name or {}).get(path.stem, name)),
                    read(tmp / "labelme" / path.stem / name),
                )
            ]

        image_files = image_file_names(json.loads((ours_dir / convert_json.MANIFEST_FILE).read_text()))
        label_differs = differ("label.png", read_label_png)
        processed = sum(path.stat().st_size for path in ours_dir.rglob("*") if path.is_file())
        # ours: img.jpg (the photo's own bytes, or re-encoded when EXIF-rotated) or img.png; decoded pixels
        image_differs = differ("img.png", read_rgb, image_files)

    n = len(json_paths)
    print(
        f"{n} annotations in {args.raw}; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
        f"convert_json workers={result['workers']}; best of {args.repeat}"
    )
    print(
        f"labelme path (1 process): {labelme_wall:6.2f} s {n / labelme_wall:7.1f} img/s   "
        f"CPU {labelme_cpu / n * 1000:5.1f} ms/img"
    )
    print(
        f"convert_json.run:         {ours_wall:6.2f} s {n / ours_wall:7.1f} img/s   "
        f"CPU {ours_cpu / n * 1000:5.1f} ms/img  (also writes label_viz.png and the manifest)"
    )
    print(f"speed-up: {labelme_wall / ours_wall:.2f}x wall clock, {labelme_cpu / ours_cpu:.2f}x less CPU per image")
    print(f"label PNGs identical: {n - len(label_differs)}/{n}")
    # Both re-encode EXIF-rotated photos as JPEG before decoding them (labelme at quality 95, we with the
    # photo's own tables), so those differ.
    print(
        f"images identical (decoded): {n - len(image_differs)}/{n}"
        + (f" (differ: {', '.join(image_differs)})" if image_differs else "")
    )
    print(
        f"data/processed: {processed / 1e6:.1f} MB for {raw_bytes / 1e6:.1f} MB of raw data "
        f"({processed / raw_bytes:.2f}x)"
    )
    if label_differs:
        sys.exit(f"label PNGs differ from labelme's: {', '.join(label_differs)}")


if __name__ == "__main__":
    main()
