"""What runs on the executors: each Spark task segments its photos, one at a time, with the served model.

The model (a folder Spark shipped to every executor with ``SparkContext.addFile``) is loaded with
``mlflow.pyfunc.load_model`` once per Python worker process and kept: Spark reuses its Python workers from
task to task. Each photo is read here, from the input (a shared folder or S3), not sent through the JVM;
its mask goes straight to the output, so the driver only ever holds the manifest's rows.

A photo the served model refuses (empty, not an image, cannot be decoded, too many pixels: its
INVALID_PARAMETER_VALUE error) or one that is too big a file or cannot be read is a ``failed`` row with the
model's own reason. Any other error is the job's, not the photo's: it fails the task, and Spark retries it.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from PIL import Image

from batch_segment.manifest import FAILED, FIELDS, OK, PARTS_DIR, UNREADABLE, mask_key, to_jsonl
from batch_segment.storage import LocalFolder, S3Prefix, unique_name

IMAGE_COLUMN, MASK_COLUMN = "image", "mask"  # the served model's signature (stages.prediction.photo_segmenter)
# The served model names the photo by its row in the request: one photo per request here, always row 0.
REQUEST_PREFIX = re.compile(r"^cannot segment \d+ of \d+ photo\(s\): row 0: ")
_MODELS: dict[str, object] = {}  # model folder -> loaded pyfunc, per Python worker process


@dataclass(frozen=True)
class Task:
    """What every task needs to know (pickled into each one)."""

    source: LocalFolder | S3Prefix
    output: LocalFolder | S3Prefix
    model_file: str  # the shipped model archive's name under SparkFiles (unpacked there)
    model_uri: str  # the version it is, models:/<name>/<version>
    max_photo_bytes: int


def loaded_model(model_file: str):
    from pyspark import SparkFiles

    path = SparkFiles.get(model_file)
    if path not in _MODELS:
        import mlflow.pyfunc

        _MODELS[path] = mlflow.pyfunc.load_model(path)
    return _MODELS[path]


def segment_partition(batches: Iterator[pd.DataFrame], task: Task) -> Iterator[pd.DataFrame]:
    """mapInPandas's function: rows (photo, name, size, modified_ns) in, manifest rows out."""
    model = loaded_model(task.model_file)
    class_names = list(model.metadata.metadata["class_names"])
    for batch in batches:
        rows = [segment_photo(model, class_names, task, *photo) for photo in batch.itertuples(index=False)]
        if rows:
            task.output.write(f"{PARTS_DIR}{unique_name()}.jsonl", to_jsonl(rows))
        yield pd.DataFrame(rows, columns=[name for name, _ in FIELDS])


def segment_photo(model, class_names: list[str], task: Task, photo: str, name: str, size: int, modified_ns: int):
    started = time.perf_counter()
    row = {"photo": photo, "size": size, "modified_ns": modified_ns, "model": task.model_uri}
    row.update(status=FAILED, mask=None, reason=None, width=None, height=None, class_pixels=None)
    if size > task.max_photo_bytes:
        row["reason"] = f"too large: a file of {size:,} bytes; the limit is {task.max_photo_bytes:,} bytes"
        return finished(row, started)
    try:
        data = task.source.read(photo)
    except Exception as err:  # noqa: BLE001 - whatever the storage says, this photo could not be read
        row["reason"] = f"{UNREADABLE}: {type(err).__name__}: {err}"
        return finished(row, started)
    try:
        png = model.predict(pd.DataFrame({IMAGE_COLUMN: [data]}))[MASK_COLUMN][0]
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(INVALID_PARAMETER_VALUE):
            raise
        row["reason"] = REQUEST_PREFIX.sub("", err.message)
        return finished(row, started)
    del data
    with Image.open(io.BytesIO(png)) as mask:
        row["width"], row["height"] = mask.size
        counts = np.bincount(np.asarray(mask).ravel(), minlength=len(class_names))
    names = class_names + [str(class_id) for class_id in range(len(class_names), len(counts))]
    row["class_pixels"] = json.dumps({names[i]: int(n) for i, n in enumerate(counts) if n})
    row["mask"] = mask_key(name)
    task.output.write(row["mask"], png)
    row["status"] = OK
    return finished(row, started)


def finished(row: dict, started: float) -> dict:
    row["seconds"] = round(time.perf_counter() - started, 4)
    return row
