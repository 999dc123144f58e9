"""A person's own photos, few and multi-class, through `dvc repro` of the DEFAULT profile with no param edits.

docs/own-photos.md's workflow block runs as written in a temp copy of the repo: the labels file, the demo set
replaced by 8 photos from ~/my_photos (demo_data.multiclass: 12 classes, some rare), labelme, `dvc repro`.
Two commands have stand-ins (tests/docs_pages.py): labelme's window, which saves the generator's annotations
as a person would, and pip, which must not reinstall the shared venv (the annotate extra is in dev's).
The demo profile's batch sizes assume 87 training photos; here there are 6, and the pipeline must adapt,
say so, and finish, with the report's headline mIoU over the classes present.
"""

import json
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from demo_data.multiclass import labels_text, write_multiclass_dataset

from docs_pages import block, labelme_stand_in, stand_in_venv
from dvc_helpers import copy_repo, dvc, env

pytestmark = pytest.mark.slow
MODELS = ("paddle", "paddleseg")
PIP_STAND_IN = """#!/usr/bin/env bash
# Stands in for pip: the shared venv already has the annotate extra (labelme), and must not be reinstalled.
echo "$@" >> "$(dirname "$0")/pip-calls.txt"
"""


@pytest.fixture(scope="module")
def own_photos_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    repo = copy_repo(root / "repo")
    names = write_multiclass_dataset(root / "annotated", count=8, seed=3, size=(640, 480), classes=12, progress=False)
    (root / "home" / "my_photos").mkdir(parents=True)
    for photo in (root / "annotated").glob("*.jpg"):
        photo.rename(root / "home" / "my_photos" / photo.name)
    venv = stand_in_venv(repo, {"labelme": labelme_stand_in("ANNOTATIONS"), "pip": PIP_STAND_IN})
    workflow = block("docs/own-photos.md", "# 1. Install labelme")
    started = time.perf_counter()
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", workflow],
        cwd=repo,
        env={**env(), "HOME": str(root / "home"), "ANNOTATIONS": str(root / "annotated")},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, f"the workflow failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    print(
        f"docs/own-photos.md's workflow, demo profile, 8 photos of {len(names) - 1} classes: "
        f"{time.perf_counter() - started:.0f} s"
    )
    assert (venv / "bin" / "pip-calls.txt").read_text() == "install -e .[annotate]\n"
    assert (repo / "data" / "labels.txt").read_text() == labels_text(12)  # the page's classes: the generator's
    assert sorted(path.name for path in (repo / "data" / "raw").iterdir()) == sorted(
        f"{name}.{suffix}" for name in (f"IMG_{index:04d}" for index in range(8)) for suffix in ("jpg", "json")
    )
    return repo, names, result.stdout + result.stderr


def test_every_stage_ran_and_the_workspace_is_clean(own_photos_repo):
    repo, _, _ = own_photos_repo
    assert "Data and pipelines are up to date" in dvc(repo, "status").stdout
    summary = json.loads((repo / "data" / "splits" / "summary.json").read_text())
    assert summary["counts"] == {"train": 6, "val": 1, "test": 1}


def test_build_splits_named_the_classes_with_no_training_pixels(own_photos_repo):
    repo, _, log = own_photos_repo
    unseen = json.loads((repo / "data" / "splits" / "summary.json").read_text())["classes_not_in_train"]
    assert unseen, "12 classes, some rare, in 6 training photos: some cannot be in the train split"
    [warning] = [line for line in log.splitlines() if line.startswith("build_splits: warning:")]
    assert all(f"{name} (" in warning for name in unseen)
    assert "Never seen in training" in (repo / "reports" / "report.md").read_text()


def test_the_trainers_adapted_the_batch_to_six_photos_and_said_so(own_photos_repo):
    repo, _, log = own_photos_repo
    [line] = [line for line in log.splitlines() if line.startswith("train_paddleseg: adapted to the data")]
    assert "batch_size 8 -> 6: 6 training photos per epoch shared by 2 processes" in line
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run_id = json.loads((repo / "models" / "paddleseg" / "mlflow_run.json").read_text())["run_id"]
    params = client.get_run(run_id).data.params
    assert params["train_paddleseg.batch_size"] == "6"
    assert params["adapted.train_paddleseg.batch_size"].startswith("8 -> 6")
    assert json.loads((repo / "metrics" / "train_paddleseg.json").read_text())["batch_size"] == 6
    run_id = json.loads((repo / "models" / "paddle" / "mlflow_run.json").read_text())["run_id"]
    params = client.get_run(run_id).data.params  # DoveNet: 6 photos, 33 epochs of one step
    assert params["adapted.train_paddle.batch_size"] == "8 -> 6: 6 training photos per epoch"
    assert params["adapted.train_paddle.warmup_steps"] == "40 -> 3: 33 training steps in all, a tenth of them"


def test_the_headline_miou_is_over_the_classes_present(own_photos_repo):
    repo, names, _ = own_photos_repo
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    scored = json.loads((repo / "predictions" / "paddle" / "metrics.json").read_text())["test"]
    absent = [name for name in names if scored["IoU"][name] is None]
    assert absent, "some classes of the labels file should be in neither the test label nor the prediction"
    for model in MODELS:
        test = metrics[model]["test"]
        assert set(test["IoU"]) == set(names)
        defined = [value for value in test["IoU"].values() if value is not None]
        assert test["mIoU"] == pytest.approx(sum(defined) / len(defined))
        assert test["mIoU_all_classes"] == pytest.approx(sum(defined) / len(names))
    report = (repo / "reports" / "report.md").read_text()
    assert "| test mIoU, all classes (PaddleSeg) |" in report and "## Per-class scores" in report
