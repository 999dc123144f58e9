"""The driver: list the photos, skip those done, resolve and ship the model, run the tasks, merge the manifest.

Everything that can be wrong with the request (no input, no photo, clashing names, no model) is found before
Spark starts or anything is written. The model URI is resolved once to a version (``models:/name@champion``
-> ``models:/name/7``), downloaded once and shipped to the executors: they need no MLflow login, and an alias
that moves during a job changes nothing in it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from batch_segment.manifest import (
    FAILED,
    MANIFEST,
    MASK_DIR,
    OK,
    PARTS_DIR,
    SPARK_SCHEMA,
    SUMMARY,
    from_jsonl,
    is_done,
    read_rows,
    to_jsonl,
)
from batch_segment.storage import Entry, LocalFolder
from batch_segment.worker import Task, segment_partition

PACKAGE_DIR = Path(__file__).resolve().parent
MAX_PHOTOS_PER_TASK = 64  # a task's photos: small enough to balance the cores and lose little when killed
TASKS_PER_CORE = 4


class BatchError(Exception):
    """Bad input: printed as one line, before anything is written or started."""


@dataclass(frozen=True)
class Photo:
    entry: Entry
    name: str  # its mask's name: the key without its suffix (predict's rule)


def list_photos(source, output) -> list[Photo]:
    """The photos under ``source`` as predict's folder mode finds them (image suffixes, no hidden files or
    folders, nothing under ``output``), with predict's output names; two that would share a mask refused."""
    from stages.common.config import StageError
    from stages.prediction.files import IMAGE_SUFFIXES, output_names

    skip = output.is_inside(source)
    entries = [
        entry
        for entry in source.list()
        if PurePosixPath(entry.key).suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in PurePosixPath(entry.key).parts)
        and not (skip is not None and (skip == "" or entry.key.startswith(skip)))
    ]
    if not entries:
        raise BatchError(f"{source}: no photos to segment (looked for {', '.join(IMAGE_SUFFIXES)})")
    root = PurePosixPath("/")
    try:
        names = output_names(root, [root / entry.key for entry in entries])
    except StageError as err:
        raise BatchError(str(err).replace(f"{root}: ", f"{source}: ", 1)) from None
    return [Photo(entry, name) for entry, name in zip(entries, names)]


def resolve_model(model_uri: str) -> str:
    """``models:/name@alias`` -> ``models:/name/<version>``; other URIs as they are."""
    from mlflow import MlflowClient

    if model_uri.startswith("models:/") and "@" in model_uri:
        name, alias = model_uri[len("models:/") :].split("@", 1)
        try:
            version = MlflowClient().get_model_version_by_alias(name, alias).version
        except Exception as err:  # noqa: BLE001 - MLflow's reasons vary (no model, no alias, no server, a login)
            raise BatchError(f"model {model_uri}: {' '.join(str(err).split())[:300]}") from None
        return f"models:/{name}/{version}"
    return model_uri


def download_model(model_uri: str, folder: Path) -> Path:
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the job's own progress is enough
    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder)))
    except Exception as err:  # noqa: BLE001
        raise BatchError(f"model {model_uri}: {' '.join(str(err).split())[:300]}") from None
    if not (path / "MLmodel").is_file():
        raise BatchError(f"model {model_uri}: no MLmodel file in what MLflow gave ({path})")
    return path


def zipped(folder: Path, target: Path, under: str = "") -> Path:
    """``folder``'s files in a zip at ``target`` (under ``under`` inside it), for Spark to ship."""
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, f"{under}{path.relative_to(folder).as_posix()}")
    return target


def start_spark(master: str, conf: dict[str, str]):
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise BatchError("pyspark is not installed: pip install 'doveseg[spark]' (docs/scale.md)") from None
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        raise BatchError("Spark needs Java 17: apt-get install -y openjdk-17-jre-headless (docs/scale.md)")
    # The executors' Python: this one (PySpark reads it from the environment, not from spark.pyspark.python).
    os.environ["PYSPARK_PYTHON"] = os.environ.get("PYSPARK_PYTHON") or sys.executable
    builder = SparkSession.builder.master(master).appName("batch_segment")
    defaults = {"spark.ui.showConsoleProgress": "false"}  # the job prints its own progress
    if master.startswith("local"):  # one machine: nothing needs to reach the driver from outside
        defaults.update({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    for key, value in {**defaults, **conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@contextlib.contextmanager
def progress(spark, total_photos: int, tasks: int):
    """A progress line on stderr from Spark's status tracker: tasks done, and about how many photos."""
    from tqdm import tqdm

    tracker, done, stop = spark.sparkContext.statusTracker(), [0], threading.Event()
    bar = tqdm(total=total_photos, unit="photo", desc="batch_segment", file=sys.stderr, mininterval=1)

    def poll():
        while not stop.wait(1):
            finished = sum(
                info.numCompletedTasks
                for job in tracker.getJobIdsForGroup("batch_segment")
                for stage in (tracker.getJobInfo(job).stageIds if tracker.getJobInfo(job) else [])
                if (info := tracker.getStageInfo(stage))
            )
            photos = min(total_photos, round(total_photos * finished / tasks))
            bar.update(photos - done[0])
            done[0] = photos

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
        bar.update(total_photos - done[0])
    finally:
        stop.set()
        thread.join()
        bar.close()


def normalised(row: dict) -> dict:
    pixels = row.get("class_pixels")
    return {**row, "class_pixels": json.loads(pixels) if isinstance(pixels, str) else pixels}


def run(
    input_location,
    output,
    model_uri: str,
    master: str = "local[*]",
    conf: dict[str, str] | None = None,
    max_photo_bytes: int = 200_000_000,
) -> dict:
    """Segment every photo under ``input_location`` not done yet into ``output``; returns the summary."""
    if isinstance(input_location, LocalFolder) and not input_location.exists():
        raise BatchError(f"{input_location}: no such folder")
    photos = list_photos(input_location, output)
    version_uri = resolve_model(model_uri)
    held = {entry.key for entry in output.list()} if output.exists() else set()
    old_rows, parts = read_rows(output, held)
    previous = {row["photo"]: normalised(row) for row in old_rows}  # later rows (the parts) win
    masks = {key for key in held if key.startswith(MASK_DIR)}
    todo = [p for p in photos if not is_done(previous.get(p.entry.key), p.entry, version_uri, masks)]
    print(
        f"batch_segment: {len(photos)} photos under {input_location}, {len(photos) - len(todo)} already done; "
        f"model {version_uri} ({model_uri})",
        file=sys.stderr,
        flush=True,
    )
    started, new_rows = time.perf_counter(), []
    if todo:
        with tempfile.TemporaryDirectory(prefix="batch-segment-") as work:
            model_dir = download_model(version_uri, Path(work) / "model")
            spark = start_spark(master, conf or {})
            try:
                new_rows = run_tasks(spark, todo, model_dir, version_uri, input_location, output, max_photo_bytes)
            finally:
                spark.stop()
    seconds = time.perf_counter() - started
    rows = {**previous, **{row["photo"]: normalised(row) for row in new_rows}}
    listed = {photo.entry.key for photo in photos}
    manifest = [rows[key] for key in sorted(rows) if key in listed]  # photos no longer there drop out
    output.write(MANIFEST, to_jsonl(manifest))
    for key in {*parts, *(entry.key for entry in output.list(PARTS_DIR))}:  # merged into the manifest now
        output.delete(key)
    summary = {
        "input": str(input_location),
        "output": str(output),
        "model": model_uri,
        "model_version": version_uri,
        "master": master,
        "photos": len(photos),
        "segmented": sum(row["status"] == OK for row in new_rows),
        "failed": sum(row["status"] == FAILED for row in new_rows),
        "skipped": len(photos) - len(todo),
        "failed_in_manifest": sum(row["status"] == FAILED for row in manifest),
        "seconds": round(seconds, 2),
        "photos_per_s": round(len(new_rows) / seconds, 3) if new_rows else None,
    }
    output.write(SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def run_tasks(spark, todo: list[Photo], model_dir: Path, version_uri: str, source, output, max_photo_bytes: int):
    context = spark.sparkContext
    # This package, importable on the executors without this checkout; the model as an archive each executor
    # unpacks once (SparkContext.addFile takes folders in local mode only).
    context.addPyFile(str(zipped(PACKAGE_DIR, model_dir.parent / "batch_segment.zip", "batch_segment/")))
    model_zip = zipped(model_dir, model_dir.parent / "served_model.zip")
    context.addArchive(str(model_zip))
    tasks = min(len(todo), max(TASKS_PER_CORE * context.defaultParallelism, math.ceil(len(todo) / MAX_PHOTOS_PER_TASK)))
    listing = [(p.entry.key, p.name, p.entry.size, p.entry.modified_ns) for p in todo]
    frame = spark.createDataFrame(
        context.parallelize(listing, tasks), "photo string, name string, size bigint, modified_ns bigint"
    )
    task = Task(source, output, model_zip.name, version_uri, max_photo_bytes)
    context.setJobGroup("batch_segment", f"segment {len(todo)} photos with {version_uri}")
    segmented = frame.mapInPandas(functools.partial(segment_partition, task=task), SPARK_SCHEMA)
    with progress(spark, len(todo), tasks):
        return [row.asDict() for row in segmented.collect()]


def read_manifest(output) -> list[dict]:
    return [normalised(row) for row in from_jsonl(output.read(MANIFEST))]
