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

The pieces live in stages.prediction: the settings, model and photos checked (``draft_inputs``), the drafts
(``drafting``) and the files in output_dir (``draft_outputs``).
"""

from __future__ import annotations

import os

from stages.common.config import stage_main
from stages.data.labels import read_labels
from stages.models.inference_model import Predictor
from stages.prediction.draft_inputs import check_settings, chosen_model, photos_to_draft
from stages.prediction.draft_outputs import json_counts, rank, write_outputs
from stages.prediction.drafting import Drafter, draft_photos


def run(cfg) -> dict:
    settings = cfg.preannotate
    input_dir, output_dir = check_settings(settings)
    labels = read_labels(cfg.data.labels)
    model, model_dir, meta = chosen_model(cfg, labels)
    todo, kept = photos_to_draft(input_dir, output_dir)

    threads = int(settings.cpu_threads) or os.cpu_count() or 1
    predictor = Predictor(model_dir, cpu_threads=threads) if todo else None
    drafter = Drafter(model, meta.architecture, labels.names, settings)
    rows, skipped, seconds = draft_photos(drafter, predictor, todo, input_dir, settings.batch_size)

    rank(rows)
    summary = {
        "input_dir": str(input_dir),
        "labels": str(cfg.data.labels),
        "model": model,
        "architecture": meta.architecture,
        "tolerance_px": float(settings.tolerance_px),
        "min_iou": float(settings.min_iou),
        "min_area_px": int(settings.min_area_px),
        "counts": json_counts(rows, kept, skipped),
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
        "kept_person_json": kept,
        "skipped": skipped,
    }
    write_outputs(output_dir, rows, input_dir, summary, int(settings.page_photos))
    return {
        **{key: summary[key] for key in ("input_dir", "model", "counts", "seconds")},
        "output_dir": str(output_dir),
        "most_uncertain": [row["image"] for row in rows[:5]],
    }


if __name__ == "__main__":
    stage_main(run)
