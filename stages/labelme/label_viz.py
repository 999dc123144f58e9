"""label_viz.png, labelme2voc's picture of a sample for people: the label's colours over the greyed photo, with
a legend of the classes present, at most LABEL_VIZ_MAX_SIDE pixels on its long side."""

from __future__ import annotations

from collections.abc import Iterable

import imgviz
import numpy as np
from PIL import Image

from stages.data.images import VOC_PALETTE
from stages.data.labels import IGNORE_INDEX, IGNORE_NAME, Labels

# label_viz.png's long side at most: a screen's worth, with the legend still legible. A 12 MP picture
# would take ~8 MB and ~2 s to write, more than the photo itself, for nothing a person would see.
LABEL_VIZ_MAX_SIDE = 1024
# zlib level 3 writes it ~30% smaller than run-length coding (~0.2-0.4 MB, next to a 1-3 MB photo kept as
# it is) for ~15 ms more; the default level 6 saves 5% more in twice the time.
LABEL_VIZ_PNG_OPTIONS = {"compress_level": 3}


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
