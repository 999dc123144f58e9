"""For the Spark tests and bench/spark_*.py: the served model registered in a real SQLite MLflow store, photo sets
with bad photos among them, predict's masks of the good ones, and the processes a standalone cluster leaves."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import REPO_ROOT
from tiny_pipeline import deploy_model, export_model, make_cfg, make_photo, write_photos

SERVED_MODEL = "doveseg-segmenter"


def register_segmenter(root: Path, exports_dir: Path | None = None) -> str:
    """A tiny UNet-like model (tests/tiny_pipeline.py: coarse scores, resized back bilinearly), deployed as the
    export stage does (ONNX included) to ``<root>/exports/paddleseg``, then logged as the served model, version
    1 of doveseg-segmenter, alias champion, in ``sqlite:///<root>/mlflow.db``. Returns that tracking URI."""
    import mlflow
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from stages.models.inference_model import read_meta
    from stages.prediction.photo_segmenter import DEPLOY_FILES, ServingLimits, pyfunc_arguments

    models = root / "models"
    if exports_dir is None:
        export_model(models / "paddleseg", (24, 20), pool=2, upsample=True, architecture="UNet")
        exports_dir = deploy_model(models / "paddleseg")
    bundle = root / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    for name in DEPLOY_FILES:
        shutil.copyfile(exports_dir / name, bundle / name)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("spark", artifact_location=str(root / "mlruns"))
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # for log_model; it also sets MLFLOW_TRACKING_URI: put back below
    try:
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="photo_segmenter",
                registered_model_name=SERVED_MODEL,
                **pyfunc_arguments(bundle, read_meta(bundle), ServingLimits.from_params(make_cfg().export.serving)),
            )
    finally:
        mlflow.set_tracking_uri(None)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    client.set_registered_model_alias(SERVED_MODEL, "champion", "1")
    return uri


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_photo_set(folder: Path, good: int = 16, seed: int = 3) -> dict[str, str]:
    """``good`` photos (PNG and JPEG, 20 to 120 pixels a side, two in a subfolder, one RGBA, one stored
    sideways with its EXIF turn, big.png a 43 KB file of noise) and four bad ones, under ``folder``; also a text
    file and a hidden photo, which are not photos to segment. Returns each bad photo's key -> the start of the
    reason it must fail with."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_photos(folder / "phone")  # upright.png (RGBA) and portrait.jpg (EXIF orientation 6)
    for index in range(good - 3):
        height, width = (int(side) for side in rng.integers(20, 90, size=2))
        rgb, _ = make_photo(rng, height, width, with_dove=index % 4 != 3)
        if index % 2:
            Image.fromarray(rgb).save(folder / f"dove_{index:02d}.jpg", quality=90)
        else:
            Image.fromarray(rgb).save(folder / f"dove_{index:02d}.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_bytes(b"this is not a photo")
    jpeg = (folder / "dove_01.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "huge.png").write_bytes(png_bytes(Image.new("1", (10_000, 6_000))))  # 60 MP in 8 KB
    noise = rng.integers(0, 255, size=(120, 120, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "big.png")  # ~43 KB of noise
    (folder / "readme.txt").write_text("not a photo: not listed")
    (folder / ".hidden.png").write_bytes((folder / "dove_00.png").read_bytes())
    return {
        "empty.jpg": "empty: 0 bytes",
        "notes.png": "not an image file Pillow can read",
        "truncated.jpg": "cannot be decoded",
        "huge.png": "too large: 10000 x 6000 = 60,000,000 pixels; the limit is "
        f"{make_cfg().export.serving.max_image_pixels:,} pixels",
    }


def predict_masks_of(photos: Path, bad: dict[str, str], work: Path, exports_dir: Path) -> Path:
    """stages.predict's folder mode over the good photos of ``photos``: its class_id/ folder."""
    from stages import predict

    good = work / "good"
    shutil.copytree(photos, good, ignore=shutil.ignore_patterns(*bad))
    predict.run(
        make_cfg(
            f"paths.exports_dir={exports_dir.parent}",
            "predict.models=[paddleseg]",
            f"predict.input_dir={good}",
            f"predict.output_dir={work / 'predicted'}",
            "predict.cpu_threads=1",
        )
    )
    return work / "predicted" / "paddleseg" / "class_id"


def registered_project(root: Path) -> dict:
    """The served model registered (version 1, champion) under ``root``, photos/ of 16 good photos and 4 bad
    ones, and predict's masks of the good ones."""
    tracking_uri = register_segmenter(root)
    bad = write_photo_set(root / "photos")
    predicted = predict_masks_of(root / "photos", bad, root / "predict", root / "exports" / "paddleseg")
    return {"root": root, "uri": tracking_uri, "bad": bad, "predicted": predicted}


def docs_blocks(section: str) -> list[str]:
    """The bash blocks of docs/scale.md's ``section``."""
    text = (REPO_ROOT / "docs" / "scale.md").read_text()
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", part, flags=re.S)


def read_manifest(out: Path) -> dict[str, dict]:
    """``out``'s manifest by photo (checking it is sorted by photo)."""
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["photo"] for row in rows] == sorted(row["photo"] for row in rows)
    return {row["photo"]: row for row in rows}


def batch_env(tracking_uri: str, marker: str | None = None) -> dict[str, str]:
    """A shell with the venv activated, on ``tracking_uri``; the checkout importable (as `pip install -e .`
    makes it) from any folder. ``marker`` tags every process started with it (and their children)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYSPARK_PYTHON", "SPARK_HOME")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    if marker:
        env["DOVESEG_TEST_MARKER"] = marker
    return env


def marked_processes(marker: str) -> list[int]:
    """Every process whose environment holds DOVESEG_TEST_MARKER=marker: what a test started, and their children."""
    needle = f"DOVESEG_TEST_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def stop_marked(marker: str, timeout_s: float = 30) -> list[int]:
    """The processes still marked after ``timeout_s`` (none, when everything stopped), killed by id."""
    deadline = time.monotonic() + timeout_s
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = marked_processes(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def run_bash(script: str, cwd: Path, env: dict[str, str], timeout_s: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
