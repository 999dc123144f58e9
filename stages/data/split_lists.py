"""Split lists in PaddleSeg's format: ``image<sep>label`` per line, relative to data.processed_dir.

build_splits writes them; the trainers and predict read and check them here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.config import StageError
from stages.data.labels import IGNORE_INDEX

SPLIT_NAMES = ("train", "val", "test")
IMAGE_JPEG = "img.jpg"  # a processed photo: the JPEG as seen (convert_json keeps a phone's bytes)...
IMAGE_PNG = "img.png"  # ...or, from any other format, a lossless PNG
IMAGE_NAME = IMAGE_PNG  # what a manifest without image_file (written before img.jpg existed) means
LABEL_NAME = "label.png"


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    label: Path


def split_file(cfg, name: str) -> Path:
    return Path(cfg.data.splits_dir) / f"{name}.txt"


def format_line(stem: str, separator: str, image_name: str = IMAGE_NAME) -> str:
    """One list line for a processed sample (its image file ``image_name``: img.jpg or img.png), refusing
    stems that contain the separator."""
    if separator in stem or "\n" in stem:
        raise StageError(
            f"sample {stem!r}: its path contains the list separator {separator!r}; "
            "rename the JSON file or change build_splits.separator"
        )
    return f"{stem}/{image_name}{separator}{stem}/{LABEL_NAME}"


def image_file_names(manifest: dict) -> dict[str, str]:
    """stem -> its processed image's file name, from convert_json's manifest."""
    return {sample["stem"]: sample.get("image_file", IMAGE_NAME) for sample in manifest["samples"]}


def read_split(cfg, name: str) -> list[Sample]:
    path = split_file(cfg, name)
    if not path.is_file():
        raise StageError(f"{path}: split list not found; run build_splits first")
    root = Path(cfg.data.processed_dir)
    separator = cfg.build_splits.separator
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(separator)
        if len(parts) != 2:
            raise StageError(f"{path}:{number}: expected 'image{separator}label', got {line!r}")
        image, label = (root / part for part in parts)
        samples.append(Sample(stem=Path(parts[0]).parent.name or Path(parts[0]).stem, image=image, label=label))
    if not samples:
        raise StageError(f"{path}: the {name} split is empty")
    return samples


def check_samples(samples: list[Sample], num_classes: int, list_file: str | Path) -> None:
    """Raise one StageError listing every missing file, size mismatch and out-of-range label value."""
    problems = []
    for sample in samples:
        missing = [str(p) for p in (sample.image, sample.label) if not p.is_file()]
        if missing:
            problems.append(f"{sample.stem}: missing {', '.join(missing)}")
            continue
        with Image.open(sample.image) as image:
            image_size = image.size
        with Image.open(sample.label) as label_image:
            if label_image.size != image_size:
                problems.append(
                    f"{sample.label}: label size {label_image.size[0]}x{label_image.size[1]} "
                    f"differs from its image's {image_size[0]}x{image_size[1]}"
                )
                continue
            values = np.unique(np.asarray(label_image))
        bad = [int(v) for v in values if v >= num_classes and v != IGNORE_INDEX]
        if bad:
            problems.append(
                f"{sample.label}: label values {bad} are not class ids "
                f"(0..{num_classes - 1}) or {IGNORE_INDEX} (ignore)"
            )
    if problems:
        raise StageError(f"{list_file}: {len(problems)} bad sample(s):\n  " + "\n  ".join(problems))


def data_version(cfg) -> str:
    """Short hash of the three split lists: which data a model was trained and scored on."""
    digest = hashlib.sha256()
    for name in SPLIT_NAMES:
        path = split_file(cfg, name)
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()[:12]
