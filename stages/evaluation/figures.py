"""The report's figures, saved as PNGs: training curves, confusion matrices and grids of samples.

matplotlib is used through ``matplotlib.figure.Figure`` (its Agg canvas), never pyplot, so no backend
or global figure state is involved; imgviz colours the labels and predictions over the photos, as
labelme's label_viz.png does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imgviz
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

DPI = 100
THUMBNAIL_SIDE = 256  # pixels: enough to judge a mask, small enough for a self-contained HTML page


def thumbnail(array: np.ndarray, side: int = THUMBNAIL_SIDE, is_label: bool = False) -> np.ndarray:
    """Shrink an image (bilinear) or a label (nearest, so ids stay ids) to at most side x side."""
    height, width = array.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.NEAREST if is_label else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize(size, resample))


def label_over_photo(label: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Class colours (labelme/VOC palette) at half opacity over the greyed photo."""
    return imgviz.label2rgb(label, image=imgviz.rgb2gray(rgb), alpha=0.5)


@dataclass(frozen=True)
class Cell:
    picture: np.ndarray  # HxWx3 uint8
    caption: str


def picture_grid(rows: list[list[Cell]], path: Path, title: str = "", cell_inches: float = 2.6) -> Path:
    """A table of captioned pictures, one list of cells per row (the tutorial's input | label | ... figure)."""
    columns = max(len(row) for row in rows)
    figure = Figure(
        figsize=(cell_inches * columns, cell_inches * len(rows) + (0.4 if title else 0)), dpi=DPI, layout="constrained"
    )
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row_axes, row in zip(axes, rows):
        for ax, cell in zip(row_axes, row + [None] * (columns - len(row))):
            ax.set_axis_off()
            if cell is not None:
                ax.imshow(cell.picture)
                ax.set_title(cell.caption, fontsize=9)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def confusion_matrix(matrix: np.ndarray, class_names: list[str], title: str, path: Path) -> Path:
    """Rows: true class, columns: predicted; colour = share of the row, text = share and pixel count."""
    matrix = np.asarray(matrix, dtype=np.int64)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals != 0)
    size = 1.6 + 1.1 * len(class_names)
    figure = Figure(figsize=(size + 1, size), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="share of the true class's pixels")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (label.png)")
    for row in ticks:
        for column in ticks:
            colour = "white" if shares[row, column] > 0.6 else "black"
            ax.text(
                column,
                row,
                f"{shares[row, column]:.1%}\n{matrix[row, column]:,} px",
                ha="center",
                va="center",
                fontsize=8,
                color=colour,
            )
    ax.set_title(title)
    return _save(figure, path)


def training_curves(
    curves: dict[str, dict[str, list[float]]], path: Path, x_name: str = "epoch", step_columns=("epoch", "iter")
) -> Path:
    """One panel per metric column (train_loss, val_mIoU, ...), one line per model.

    ``curves[model][column]`` is a list of values aligned with ``curves[model][x_name]``; NaN (an epoch
    without validation) is left out of that line. Step columns (epoch, iter) are x axes, not panels.
    """
    columns = curve_panels(curves, x_name, step_columns)
    panels = max(1, len(columns))
    figure = Figure(figsize=(4.2 * panels, 3.4), dpi=DPI, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    for ax, column in zip(axes, columns):
        for model, table in curves.items():
            if column not in table:
                continue
            x, y = np.asarray(table[x_name], float), np.asarray(table[column], float)
            keep = ~np.isnan(y)
            ax.plot(x[keep], y[keep], marker="o" if keep.sum() < 30 else None, markersize=3, label=model)
        ax.set_title(column)
        ax.set_xlabel(x_name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(figure, path)


def curve_panels(
    curves: dict[str, dict[str, list[float]]], x_name: str = "epoch", step_columns=("epoch", "iter")
) -> list[str]:
    """The columns training_curves draws a panel for: every column but the x axis and the step counters."""
    columns = []
    for table in curves.values():
        columns += [name for name in table if name != x_name and name not in step_columns and name not in columns]
    return columns


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
