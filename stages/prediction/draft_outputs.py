"""preannotate's outputs in its output_dir: ``ranking.csv`` (the drafted photos, most uncertain first),
``index.html`` (the top photos with their uncertain areas highlighted: stages.prediction.review_page) and
``summary.json`` (what was drafted, kept and skipped, and timings).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from stages.common.outputs import write_json_atomic, write_text_atomic
from stages.prediction.files import read_photo
from stages.prediction.review_page import Card, highlight, page_html

RANKING_NAME = "ranking.csv"
PAGE_NAME = "index.html"
SUMMARY_NAME = "summary.json"


def rank(rows: list[dict]) -> None:
    """Most uncertain first, numbered from 1 (``row["rank"]``)."""
    rows.sort(key=lambda row: -row["score"])
    for number, row in enumerate(rows, 1):
        row["rank"] = number


def json_counts(rows: list[dict], kept: list, skipped: list) -> dict[str, int]:
    """How many JSONs were written, replaced and kept (drafts, a person's), and photos skipped."""
    counts = {status: sum(row["json"] == status for row in rows) for status in ("written", "replaced", "kept_draft")}
    return counts | {"kept_person": len(kept), "skipped": len(skipped)}


def write_outputs(output_dir: Path, rows: list[dict], input_dir: Path, summary: dict, page_photos: int) -> None:
    write_text_atomic(output_dir / RANKING_NAME, ranking_csv(rows))
    write_text_atomic(output_dir / PAGE_NAME, review_page(rows, input_dir, summary, page_photos))
    write_json_atomic(output_dir / SUMMARY_NAME, summary)


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
