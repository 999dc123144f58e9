"""A model's drafts of labelme annotations, from one forward pass per batch of photos: each photo's mask
traced into polygons that rasterise back to it (stages.labelme.polygons), written as a labelme JSON marked
as drafted (stages.labelme.drafts), and how unsure the model was about the photo
(stages.prediction.uncertainty), to rank which to annotate first.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.common.config import StageError
from stages.common.outputs import write_json_atomic
from stages.data.labels import BACKGROUND_NAME
from stages.labelme.drafts import JsonState, draft_document, polygon_shape, shape_description
from stages.labelme.polygons import HOLE, trace_mask
from stages.models.inference_model import preprocess
from stages.prediction.draft_inputs import relative
from stages.prediction.files import read_photo
from stages.prediction.masks import batches, scores_to_mask
from stages.prediction.uncertainty import certainty, photo_score, resize_map

STEPS = ("read", "predict", "score", "trace_and_write")  # where the time goes, in summary.json


def draft_photos(drafter, predictor, todo: list, input_dir: Path, batch_size: int) -> tuple[list, list, dict]:
    """Draft every (photo, JSON state) of ``todo`` in batches: returns (a row per drafted photo, the unreadable
    photos skipped, seconds per step). A photo that cannot be read is skipped with a warning; none readable
    is a StageError."""
    rows, skipped = [], []
    seconds = dict.fromkeys(STEPS, 0.0)
    with tqdm(total=len(todo), unit="img", desc=f"preannotate {input_dir}", file=sys.stderr) as progress:
        for batch in batches(todo, batch_size):
            started = time.perf_counter()
            readable = []
            for photo, state in batch:
                rgb = read_photo(photo)
                if isinstance(rgb, str):
                    tqdm.write(f"warning: skipped {photo}: {rgb}", file=sys.stderr)
                    skipped.append({"image": relative(photo, input_dir), "error": rgb})
                else:
                    readable.append((photo, state, rgb))
            seconds["read"] += time.perf_counter() - started
            if readable:
                rows += drafter.draft_batch(predictor, readable, input_dir, seconds)
            progress.update(len(batch))
    if todo and not rows:
        raise StageError(
            f"{input_dir}: none of its {len(todo)} photos could be read: "
            + "; ".join(f"{s['image']} ({s['error']})" for s in skipped)
        )
    return rows, skipped, seconds


class Drafter:
    """One batch of photos: forward pass, masks, scores, and the JSON drafts."""

    def __init__(self, model: str, architecture: str, class_names: tuple[str, ...], settings):
        self.model, self.architecture, self.class_names = model, architecture, class_names
        self.tolerance_px = float(settings.tolerance_px)
        self.min_iou = float(settings.min_iou)
        self.min_area_px = int(settings.min_area_px)
        self.border_px = int(settings.border_px)
        self.overwrite = bool(settings.overwrite)

    def draft_batch(self, predictor, readable: list, input_dir: Path, seconds: dict) -> list[dict]:
        started = time.perf_counter()
        batch = np.stack([preprocess(rgb, predictor.meta) for _, _, rgb in readable])
        logits = predictor.logits(batch)
        masks = [scores_to_mask(scores, rgb.shape[:2]) for scores, (_, _, rgb) in zip(logits, readable)]
        seconds["predict"] += time.perf_counter() - started
        rows = []
        for (photo, state, _), scores, mask in zip(readable, logits, masks):
            started = time.perf_counter()
            maps = certainty(scores)
            score, confidence = photo_score(maps, self.border_px)
            seconds["score"] += time.perf_counter() - started
            started = time.perf_counter()
            status, shapes = "kept_draft", None
            if state is JsonState.MISSING or self.overwrite:
                shapes = self.write_draft(photo, mask, resize_map(maps.confidence, mask.shape), confidence)
                status = "written" if state is JsonState.MISSING else "replaced"
            seconds["trace_and_write"] += time.perf_counter() - started
            rows.append(
                {
                    "image": relative(photo, input_dir),
                    "score": score,
                    "confidence": confidence,
                    "shapes": len(shapes) if shapes is not None else None,
                    "json": status,
                    # kept small (uint8 at the model's resolution) for the page's pictures
                    "uncertainty": np.rint(maps.uncertainty * 255).astype(np.uint8),
                }
            )
        return rows

    def write_draft(self, photo: Path, mask: np.ndarray, confidence: np.ndarray, photo_confidence: float) -> list:
        polygons = trace_mask(mask, self.tolerance_px, self.min_area_px, weights=confidence, min_iou=self.min_iou)
        shapes = [
            polygon_shape(
                BACKGROUND_NAME if polygon.class_id == HOLE else self.class_names[polygon.class_id],
                polygon.points.tolist(),
                shape_description(self.model, self.architecture, polygon.mean_weight),
            )
            for polygon in polygons
        ]
        marker = {"model": self.model, "architecture": self.architecture, "mean_confidence": round(photo_confidence, 4)}
        document = draft_document(shapes, photo.name, mask.shape, marker)
        write_json_atomic(photo.with_suffix(".json"), document)
        return shapes
