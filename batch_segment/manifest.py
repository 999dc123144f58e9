"""The manifest: one JSON line per photo, sorted by photo, at ``<out>/manifest.jsonl``.

A row says which photo (its key under the input, size and modification time), which model version made its
mask, and either where the mask is (``status: ok``) or why there is none (``status: failed``, ``reason``).
Each Spark task also writes the rows of its photos to ``<out>/.manifest-parts/`` as it ends: a job that is
killed loses at most its running tasks, since the next run reads those parts before deciding what is done.
"""

from __future__ import annotations

import json

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
PARTS_DIR = ".manifest-parts/"
MASK_DIR = "class_id/"  # stages.prediction.files.CLASS_ID_DIR, predict's folder of class-id PNGs
OK, FAILED = "ok", "failed"
UNREADABLE = "cannot read the file"  # a failure a rerun tries again (storage, not the photo, may be at fault)
# The row's fields, in order; Spark's schema of the rows the executors send back.
FIELDS = (
    ("photo", "string"),
    ("size", "bigint"),
    ("modified_ns", "bigint"),
    ("model", "string"),
    ("status", "string"),
    ("mask", "string"),
    ("reason", "string"),
    ("width", "int"),
    ("height", "int"),
    ("class_pixels", "string"),  # JSON: class name -> pixels of that class in the mask
    ("seconds", "double"),
)
SPARK_SCHEMA = ", ".join(f"{name} {kind}" for name, kind in FIELDS)


def mask_key(name: str) -> str:
    """Where a photo's mask goes: predict's ``class_id/<name>.png``, name being its path without the suffix."""
    return f"{MASK_DIR}{name}.png"


def to_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def from_jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def read_rows(store, keys: set[str]) -> tuple[list[dict], list[str]]:
    """The manifest's rows followed by those of any parts a killed run left, and the keys of those parts
    (``keys``: what the store holds)."""
    rows = from_jsonl(store.read(MANIFEST)) if MANIFEST in keys else []
    parts = sorted(key for key in keys if key.startswith(PARTS_DIR))
    for key in parts:
        rows.extend(from_jsonl(store.read(key)))
    return rows, parts


def is_done(row: dict | None, entry, model: str, masks: set[str]) -> bool:
    """Whether ``row`` already covers this version of the photo (same size and time) with this model: its mask
    is there, or the photo failed for a reason a rerun would meet again."""
    if row is None or (row["size"], row["modified_ns"], row["model"]) != (entry.size, entry.modified_ns, model):
        return False
    if row["status"] == FAILED:
        return not row["reason"].startswith(UNREADABLE)
    return row["mask"] in masks
