"""The docs' blocks that need a trained project, run as written, read from their pages, on a tiny one.

The project: tests/tiny_pipeline.py's data set, DoveNet trained for real by train_paddle (one tiny epoch: it
registers doveseg-dovenet version 1 as a training run does), a red-box detector as the PaddleSeg model, both
exported and checked by the export stage, in a folder with its own params.yaml and ./mlflow.db, as a
repository root is after `dvc repro`. Then:
- docs/serving.md: predict on a folder of new photos; the onnxruntime and PaddleSeg-deploy snippets;
- docs/experiments.md: loading a registered training version with the Paddle flavour; `make mlflow-ui`.
"""

from __future__ import annotations

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
import pytest
from mlflow_ui import need_chromium, render
from omegaconf import OmegaConf
from PIL import Image

from stages import export, train_paddle

from conftest import REPO_ROOT
from docs_pages import block, stand_in_venv
from dvc_helpers import env
from mlflow_server import free_port, wait_until_answering
from tiny_pipeline import make_cfg, make_dataset, trained_models, write_photos

pytestmark = pytest.mark.slow
TINY_TRAINING = [
    "train_paddle.input_size=32",
    "train_paddle.crop_size=32",
    "train_paddle.epochs=1",
    "train_paddle.batch_size=4",
    "train_paddle.num_threads=1",
]


def venv_env() -> dict:
    """As after `source .venv/bin/activate`, with this checkout's stages/ importable."""
    return {**env(), "PYTHONPATH": str(REPO_ROOT), "MLFLOW_TRACKING_URI": ""}


def run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=venv_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command[:2]}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def python_block(code: str, cwd: Path, then: str) -> str:
    """Run a page's Python block as written, then `then` (a line that prints what the test checks)."""
    return run([sys.executable, "-c", f"{code}\n{then}"], cwd).stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    overrides = [
        *make_dataset(root),
        f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"mlflow.artifact_location={root / 'mlruns'}",
        f"paths.checkpoints_dir={root / 'checkpoints'}",
        *TINY_TRAINING,
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = make_cfg(*overrides)
        started = time.perf_counter()
        train_paddle.run(cfg)
        trained_models(root, cfg, names=("paddleseg",))
        export.run(cfg)
        print(f"tiny project (train_paddle, export of both): {time.perf_counter() - started:.0f} s")
    (root / "params.yaml").write_text(OmegaConf.to_yaml(cfg))
    write_photos(root / "photos")
    return root


def meta(project: Path, model: str) -> dict:
    return json.loads((project / "exports" / model / "meta.json").read_text())


def photo_at_input_size(project: Path, model: str, folder: Path) -> Path:
    """photo.jpg at exactly the model's input size, in its own folder: a snippet's resize is then the identity,
    so its class ids at the input size must equal predict's at full size."""
    height, width = meta(project, model)["input_size"]
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    rgb[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = (230, 40, 40)  # the "dove": a red box
    folder.mkdir(parents=True)
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=100)
    return folder / "photo.jpg"


def predicted_class_ids(project: Path, model: str, photos: Path, out: Path) -> np.ndarray:
    run(
        [
            sys.executable,
            "-m",
            "stages.predict",
            f"predict.input_dir={photos}",
            f"predict.output_dir={out}",
            f"predict.models=[{model}]",
        ],
        project,
    )
    return np.asarray(Image.open(out / model / "class_id" / "photo.png"))


# --- docs/serving.md ----------------------------------------------------------------------------------


def test_predict_on_new_photos_writes_what_the_page_lists(project):
    command = block("docs/serving.md", "python -m stages.predict")
    assert command.strip() == "python -m stages.predict predict.input_dir=photos/ predict.output_dir=out/"
    run(["bash", "-euo", "pipefail", "-c", command], project)
    summary = json.loads((project / "out" / "summary.json").read_text())
    assert summary, "out/summary.json is empty"
    for model in ("paddle", "paddleseg"):
        for folder in ("class_id", "pseudo_color_prediction", "added_prediction"):
            assert len(list((project / "out" / model / folder).iterdir())) == 2, (model, folder)
        with Image.open(project / "out" / model / "class_id" / "portrait.png") as mask:
            assert mask.size == (52, 36)  # the photo's own size as seen: its EXIF orientation applied


def test_the_onnxruntime_snippet_gives_predicts_classes(project, tmp_path):
    code = block("docs/serving.md", "onnxruntime as ort")
    assert "exports/paddle/" in code
    photo = photo_at_input_size(project, "paddle", tmp_path / "photos")
    shutil.copyfile(photo, project / "photo.jpg")
    try:
        out = python_block(code, project, "print(json.dumps(class_ids.tolist()))")
    finally:
        (project / "photo.jpg").unlink()
    class_ids = np.array(json.loads(out.strip().splitlines()[-1]))
    expected = predicted_class_ids(project, "paddle", tmp_path / "photos", tmp_path / "out")
    assert class_ids.shape == expected.shape and (class_ids == expected).mean() >= 0.999


def test_the_paddleseg_deploy_snippet_gives_predicts_classes(project, tmp_path):
    code = block("docs/serving.md", "DeployConfig")
    assert "exports/paddleseg/deploy.yaml" in code
    photo = photo_at_input_size(project, "paddleseg", tmp_path / "photos")
    shutil.copyfile(photo, project / "photo.jpg")
    try:
        out = python_block(code, project, "import json; print(json.dumps(class_ids.tolist()))")
    finally:
        (project / "photo.jpg").unlink()
    class_ids = np.array(json.loads(out.strip().splitlines()[-1]))
    expected = predicted_class_ids(project, "paddleseg", tmp_path / "photos", tmp_path / "out")
    assert class_ids.shape == expected.shape and (class_ids == expected).mean() >= 0.99
    assert 0 < expected.mean() < 1  # the red box is found: both classes present


# --- docs/experiments.md ------------------------------------------------------------------------------


def test_a_registered_training_version_loads_with_the_paddle_flavour(project):
    code = block("docs/experiments.md", "mlflow.paddle.load_model")
    out = python_block(code, project, "print(json.dumps(list(scores.shape)))")
    assert json.loads(out.strip().splitlines()[-1]) == [1, 2, 32, 32]  # 2 classes at the trained 32 x 32
    run_id = json.loads((project / "models" / "paddle" / "mlflow_run.json").read_text())["run_id"]
    from mlflow.tracking import MlflowClient

    [version] = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_model_versions("name = 'doveseg-dovenet'")
    assert str(version.version) == "1" and version.run_id == run_id


def test_make_mlflow_ui_serves_the_page_it_prints(project, tmp_path):
    command = block("docs/experiments.md", "make mlflow-ui").split("#")[0].strip()
    assert command == "make mlflow-ui"
    for name in ("Makefile", "pyproject.toml"):
        shutil.copyfile(REPO_ROOT / name, project / name)
    # The venv as make left it: its own bin/ (so the marker below is this copy's, not the shared venv's), and a
    # pip that refuses, so nothing here can ever reinstall the shared venv.
    venv = stand_in_venv(project, {"pip": "#!/bin/sh\necho 'pip: not in this test' >&2\nexit 1\n"})
    (venv / "bin" / ".installed").touch()  # newer than the copied pyproject.toml: make's setup is done
    port = free_port()
    make_env = {**venv_env(), "MLFLOW_UI_PORT": str(port)}
    log = tmp_path / "mlflow-ui.log"
    with open(log, "w") as output:
        ui = subprocess.Popen(
            ["bash", "-c", command],
            cwd=project,
            env=make_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/", ui, 180, "make mlflow-ui", log)
        opened = re.search(
            rf"^Open (http://127\.0\.0\.1:{port}/#/experiments/\d+\?workflowType=machine_learning)$",
            log.read_text(),
            re.M,
        )
        assert opened, log.read_text()[-3000:]
        need_chromium()
        text = render(opened[1], tmp_path / "ui.png")
        assert text[0].startswith("Runs - "), text[:20]
        assert {"train_paddle", "train_paddleseg"} <= set(text)
    finally:
        try:
            os.killpg(ui.pid, signal.SIGTERM)  # make, mlflow ui and its workers: the session this test started
        except ProcessLookupError:
            pass  # it had stopped already
        ui.wait(timeout=30)
