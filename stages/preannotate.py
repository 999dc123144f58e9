"""preannotate: a trained model drafts labelme annotations for new photos, and ranks which to annotate first.

    python -m stages.preannotate preannotate.input_dir=photos/

Run by hand (not a DVC stage). For every photo under input_dir (subfolders too) it writes ``<photo stem>.json``
beside the photo: an ordinary labelme file whose polygons, rasterised by labelme or convert_json, give back
the model's mask (stages.labelme.polygons), each shape marked as drafted by the model
(stages.labelme.drafts). A JSON a person wrote is never touched: a photo that has one is left out and listed;
``preannotate.overwrite=true`` replaces only earlier drafts nobody has changed since.

From the same forward pass it scores how unsure the model is about each photo (stages.prediction.uncertainty)
and writes, to output_dir: ``ranking.csv`` (most uncertain first), ``index.html`` (the top photos with their
uncertain areas highlighted) and ``summary.json`` (what was drafted, kept and skipped, and timings).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.common.config import StageError, stage_main
from stages.common.outputs import write_json_atomic, write_text_atomic
from stages.data.labels import BACKGROUND_NAME, read_labels
from stages.labelme.drafts import JsonState, draft_document, json_state, polygon_shape, shape_description
from stages.labelme.polygons import HOLE, trace_mask
from stages.models.inference_model import Predictor, preprocess, read_meta
from stages.prediction.files import IMAGE_SUFFIXES, list_images, read_photo
from stages.prediction.masks import batches, scores_to_mask
from stages.prediction.review_page import Card, highlight, page_html
from stages.prediction.uncertainty import certainty, photo_score, resize_map

RANKING_NAME = "ranking.csv"
PAGE_NAME = "index.html"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.json"  # report's <paths.reports_dir>/metrics.json: {model: {"test": {"mIoU": ...}}}


def run(cfg) -> dict:
    settings = cfg.preannotate
    check_numbers(settings)
    input_dir, output_dir = check_folders(settings)
    labels = read_labels(cfg.data.labels)
    model = choose_model(cfg)
    model_dir = Path(cfg.paths.models_dir) / model
    meta = read_meta(model_dir)
    if tuple(meta.class_names) != labels.names:
        raise StageError(
            f"model {model!r} ({model_dir}) was trained on classes {list(meta.class_names)}, but "
            f"{cfg.data.labels} lists {list(labels.names)}; retrain it on these labels, or point "
            f"data.labels at the labels it was trained on"
        )
    photos = list_images(input_dir, skip_dir=output_dir)
    if not photos:
        raise StageError(
            f"preannotate.input_dir {input_dir}: no photos to annotate "
            f"(looked for {', '.join(IMAGE_SUFFIXES)}, subfolders included)"
        )
    check_json_clashes(input_dir, photos)

    todo, kept = [], []
    for photo in photos:
        state = json_state(photo.with_suffix(".json"))
        if state is JsonState.PERSON:
            kept.append({"image": relative(photo, input_dir), "json": relative(photo.with_suffix(".json"), input_dir)})
        else:
            todo.append((photo, state))
    if kept:
        tqdm.write(f"left alone: {len(kept)} photo(s) that already have a person's JSON", file=sys.stderr)

    threads = int(settings.cpu_threads) or os.cpu_count() or 1
    predictor = Predictor(model_dir, cpu_threads=threads) if todo else None
    drafter = Drafter(model, meta.architecture, labels.names, settings)
    rows, skipped = [], []
    seconds = dict.fromkeys(("read", "predict", "score", "trace_and_write"), 0.0)
    with tqdm(total=len(todo), unit="img", desc=f"preannotate {input_dir}", file=sys.stderr) as progress:
        for batch in batches(todo, settings.batch_size):
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

    rows.sort(key=lambda row: -row["score"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    counts = {status: sum(row["json"] == status for row in rows) for status in ("written", "replaced", "kept_draft")}
    counts |= {"kept_person": len(kept), "skipped": len(skipped)}
    summary = {
        "input_dir": str(input_dir),
        "labels": str(cfg.data.labels),
        "model": model,
        "architecture": meta.architecture,
        "tolerance_px": float(settings.tolerance_px),
        "min_iou": float(settings.min_iou),
        "min_area_px": int(settings.min_area_px),
        "counts": counts,
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
        "kept_person_json": kept,
        "skipped": skipped,
    }
    write_text_atomic(output_dir / RANKING_NAME, ranking_csv(rows))
    write_text_atomic(output_dir / PAGE_NAME, review_page(rows, input_dir, summary, int(settings.page_photos)))
    write_json_atomic(output_dir / SUMMARY_NAME, summary)
    return {
        **{key: summary[key] for key in ("input_dir", "model", "counts", "seconds")},
        "output_dir": str(output_dir),
        "most_uncertain": [row["image"] for row in rows[:5]],
    }


# --- checks ----------------------------------------------------------------------------------------


def check_numbers(settings) -> None:
    limits = {
        "tolerance_px": (0, None),
        "min_iou": (0, 1),
        "min_area_px": (0, None),
        "batch_size": (1, None),
        "cpu_threads": (0, None),
        "border_px": (0, None),
        "page_photos": (0, None),
    }
    for key, (low, high) in limits.items():
        value = settings[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < low
            or (high is not None and value > high)
        ):
            wanted = f"a number from {low} to {high}" if high is not None else f"a number >= {low}"
            raise StageError(f"preannotate.{key}={value!r}: must be {wanted}")


def check_folders(settings) -> tuple[Path, Path]:
    if not settings.input_dir:
        raise StageError(
            "preannotate.input_dir is not set: name the folder of photos to draft annotations for, "
            "e.g. preannotate.input_dir=photos/"
        )
    input_dir = Path(settings.input_dir)
    if not input_dir.is_dir():
        raise StageError(f"preannotate.input_dir {input_dir}: no such folder")
    if not settings.output_dir:
        raise StageError(
            "preannotate.output_dir is not set: say where ranking.csv and index.html should go, "
            "e.g. preannotate.output_dir=preannotate/"
        )
    output_dir = Path(settings.output_dir)
    if output_dir.resolve().is_relative_to(input_dir.resolve()):
        raise StageError(
            f"preannotate.output_dir {output_dir} is inside preannotate.input_dir {input_dir}: its "
            f"summary.json would be taken for an annotation there; choose a folder outside it, "
            f"e.g. preannotate.output_dir=preannotate/"
        )
    return input_dir, output_dir


def choose_model(cfg) -> str:
    """preannotate.model, or the model with the best test mIoU in report's metrics.json."""
    models_dir = Path(cfg.paths.models_dir)
    found = sorted(path.name for path in models_dir.iterdir() if path.is_dir()) if models_dir.is_dir() else []
    if cfg.preannotate.model:
        name = str(cfg.preannotate.model)
        if not (models_dir / name).is_dir():
            raise StageError(
                f"preannotate.model={name}: no model folder {models_dir / name} (model folders "
                f"there: {found or 'none; train one first'})"
            )
        return name
    metrics_path = Path(cfg.paths.reports_dir) / METRICS_NAME
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        scores = {name: float(entry["test"]["mIoU"]) for name, entry in metrics.items()}
    except FileNotFoundError:
        raise StageError(
            f"preannotate.model is null, which picks the best test mIoU in {metrics_path}, but that "
            f"file does not exist: run `dvc repro`, or name a model, e.g. preannotate.model="
            f"{found[0] if found else 'paddle'} (model folders in {models_dir}: "
            f"{found or 'none; train one first'})"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise StageError(
            f"{metrics_path}: cannot read the test mIoU of each model ({type(err).__name__}: {err}); "
            f"name a model instead, e.g. preannotate.model=paddle"
        ) from None
    present = {name: score for name, score in scores.items() if name in found}
    if not present:
        raise StageError(
            f"{metrics_path} scores {sorted(scores)}, but none of them has a model folder in "
            f"{models_dir}; train one, or name one with preannotate.model=..."
        )
    return max(sorted(present), key=present.get)


def check_json_clashes(input_dir: Path, photos: list[Path]) -> None:
    """labelme names a photo's JSON after its stem: two photos with one stem in one folder would share it."""
    seen: dict[Path, Path] = {}
    clashes = []
    for photo in photos:
        json_path = photo.with_suffix(".json")
        key = json_path.parent / json_path.name.casefold()
        if key in seen:
            clashes.append(f"{relative(seen[key], input_dir)} and {relative(photo, input_dir)}")
        seen.setdefault(key, photo)
    if clashes:
        raise StageError(
            f"{input_dir}: photos that would share one labelme JSON (named after the photo's "
            f"stem): {'; '.join(clashes)}; rename one of each pair"
        )


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --- drafting ---------------------------------------------------------------------------------------


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


# --- outputs ----------------------------------------------------------------------------------------


def ranking_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "image", "score", "confidence", "shapes", "json"])
    for row in rows:
        writer.writerow(
            [
                row["rank"],
                row["image"],
                f"{row['score']:.4f}",
                f"{row['confidence']:.4f}",
                "" if row["shapes"] is None else row["shapes"],
                row["json"],
            ]
        )
    return buffer.getvalue()


def review_page(rows: list[dict], input_dir: Path, summary: dict, count: int) -> str:
    cards = []
    for row in rows[: max(0, count)]:
        photo = input_dir / row["image"]
        rgb = read_photo(photo)
        if isinstance(rgb, str):
            continue
        try:
            shapes = json.loads(photo.with_suffix(".json").read_text(encoding="utf-8"))["shapes"]
        except (OSError, ValueError, KeyError, TypeError):
            shapes = []
        lines = (
            f"score {row['score']:.3f} (uncertainty), mean confidence {row['confidence']:.3f}",
            f"{len(shapes)} drafted shapes, JSON {row['json'].replace('_', ' ')}",
        )
        cards.append(Card(highlight(rgb, row["uncertainty"] / 255.0, shapes), f"{row['rank']}. {row['image']}", lines))
    counts = summary["counts"]
    architecture = f" ({summary['architecture']})" if summary["architecture"] else ""
    paragraphs = [
        (
            f"{len(rows)} photos in {input_dir} drafted by model {summary['model']}{architecture}, most uncertain first; "
            f"the {len(cards)} most uncertain are shown. Full list: {RANKING_NAME}."
        ),
        (
            f"JSONs written: {counts['written']}, replaced: {counts['replaced']}, earlier drafts kept: "
            f"{counts['kept_draft']}; photos left out because a person's JSON exists: {counts['kept_person']}; "
            f"unreadable photos skipped: {counts['skipped']}."
        ),
        f"Correct them in labelme: labelme {input_dir} --labels {summary['labels']} --nodata --autosave",
    ]
    return page_html("Annotate these first", paragraphs, cards)


if __name__ == "__main__":
    stage_main(run)
