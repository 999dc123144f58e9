"""A person's own photos, few and multi-class, through `dvc repro` of the DEFAULT profile with no param edits.

8 generated labelme photos (demo_data.multiclass) with 12 classes in the labels file, some of them rare,
replace the demo set in a temp copy of the repo, as README's "Bring your own photos" says. The
demo profile's batch sizes assume 87 training photos; here there are 6, and the pipeline must adapt,
say so, and finish, with the report's headline mIoU over the classes present.
"""

import json
import shutil
import time

import pytest
from mlflow.tracking import MlflowClient

from demo_data.multiclass import write_multiclass_dataset

from dvc_helpers import copy_repo, dvc, git

pytestmark = pytest.mark.slow
MODELS = ("paddle", "paddleseg")


@pytest.fixture(scope="module")
def own_photos_repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("own") / "repo")
    shutil.rmtree(repo / "data" / "raw")
    names = write_multiclass_dataset(
        repo / "data" / "raw",
        count=8,
        seed=3,
        size=(640, 480),
        classes=12,
        labels_file=repo / "data" / "labels.txt",
        progress=False,
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "my photos")
    started = time.perf_counter()
    result = dvc(repo, "repro", timeout=3600)
    print(
        f"dvc repro of the demo profile on 8 photos of {len(names) - 1} classes: {time.perf_counter() - started:.0f} s"
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
