"""The report's pictures: training curves, confusion matrices, and grids of test photos with each model's
prediction (drawn with stages.evaluation.figures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.data.images import read_label_png, read_rgb
from stages.data.split_lists import Sample
from stages.evaluation import figures
from stages.prediction.files import CLASS_ID_DIR
from stages.reporting.results import ModelResult, worst_samples
from stages.training.summary import STEP_COLUMNS

FIGURES_DIR = "figures"


def draw_figures(cfg, results: list[ModelResult], samples: list[Sample], folder: Path) -> dict:
    """Figure name -> PNG path (None where there was nothing to draw)."""
    drawn = {
        "curves": figures.training_curves(
            {r.title: r.curves for r in results},
            folder / "training_curves.png",
            x_name=_x_column(results),
            step_columns=STEP_COLUMNS,
        )
    }
    for result in results:
        drawn[f"confusion:{result.name}"] = figures.confusion_matrix(
            np.asarray(result.scored["confusion_matrix"]),
            result.scored["class_names"],
            result.title,
            folder / f"confusion_{result.name}.png",
        )
    by_stem = {sample.stem: sample for sample in samples}
    grid = evenly_spaced([sample.stem for sample in samples], int(cfg.report.grid_samples))
    drawn["grid"] = (
        sample_figure(results, [(stem, stem) for stem in grid], by_stem, folder / "test_samples.png", "Test samples")
        if grid
        else None
    )
    worst = worst_samples(results, int(cfg.report.worst_samples))
    captions = [(stem, f"{stem}\nmean mIoU {np.mean(list(scores.values())):.3f}") for stem, scores in worst]
    drawn["worst"] = (
        sample_figure(results, captions, by_stem, folder / "worst_samples.png", "Worst-scoring test samples")
        if worst
        else None
    )
    return drawn


def _x_column(results: list[ModelResult]) -> str:
    first = next(iter(results[0].curves))
    return "epoch" if all("epoch" in r.curves for r in results) else first


def evenly_spaced(stems: list[str], count: int) -> list[str]:
    if count <= 0 or not stems:
        return []
    picks = np.linspace(0, len(stems) - 1, min(count, len(stems))).round().astype(int)
    return [stems[i] for i in dict.fromkeys(picks.tolist())]


def sample_figure(
    results: list[ModelResult], rows: list[tuple[str, str]], by_stem: dict[str, Sample], path: Path, title: str
) -> Path:
    """Rows of input | label | one prediction per model, like the original tutorial's figure."""
    grid = []
    for stem, caption in rows:
        rgb = figures.thumbnail(read_rgb(by_stem[stem].image))
        label = figures.thumbnail(read_label_png(by_stem[stem].label), is_label=True)
        row = [figures.Cell(rgb, caption), figures.Cell(figures.label_over_photo(label, rgb), "label")]
        for result in results:
            mask = figures.thumbnail(
                read_label_png(result.predictions_dir / CLASS_ID_DIR / f"{stem}.png"), is_label=True
            )
            score = next(s["mIoU"] for s in result.scored["samples"] if s["stem"] == stem)
            text = f"{result.title}\nmIoU {score:.3f}" if score is not None else result.title
            row.append(figures.Cell(figures.label_over_photo(mask, rgb), text))
        grid.append(row)
    return figures.picture_grid(grid, path, title)
