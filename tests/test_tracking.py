import json
import time
from pathlib import Path

import mlflow
import mlflow.paddle
import pytest
from paddle.static import InputSpec

from stages.common.config import StageError
from stages.data.dvc_hash import dvc_md5, lock_entry
from stages.tracking import registry, runs
from stages.tracking import store as mlflow_store

from tiny_pipeline import make_dataset, red_detector


def test_a_second_store_in_the_same_process_gets_its_own_runs(tmp_path, make_cfg, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; it must not become the next stage's override."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "splits").mkdir()
    for name in ("a", "b"):
        uri = f"sqlite:///{tmp_path / name}.db"
        cfg = make_cfg(
            f"mlflow.tracking_uri={uri}",
            f"mlflow.artifact_location={tmp_path / name}",
            f"data.splits_dir={tmp_path / 'splits'}",
        )
        with runs.training_run(cfg, "train_x", tmp_path / f"{name}.json") as run:
            runs.log_metrics({"train/loss": 1.0}, step=0)
        assert mlflow.MlflowClient(uri).get_run(run.info.run_id).data.metrics == {"train/loss": 1.0}
        assert runs.read_run_id(tmp_path / f"{name}.json") == run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for this module's tests (creating one costs seconds)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()
    return uri, root


@pytest.fixture
def cfg_in(store, tmp_path, make_cfg, monkeypatch):
    """A cfg on the module's store, with a tiny processed dataset and split lists under tmp_path."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, root = store
    data = make_dataset(tmp_path / "data")

    def make(*overrides: str):
        return make_cfg(*data, f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={root / 'mlruns'}", *overrides)

    return make


def test_experiments_are_tagged_for_the_model_training_view_new_and_old(cfg_in, tmp_path):
    cfg = cfg_in("mlflow.experiment=fresh")
    with runs.training_run(cfg, "train_x", tmp_path / "run.json"):
        pass
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    assert client.get_experiment_by_name("fresh").tags[runs.EXPERIMENT_KIND_TAG] == "custom_model_development"

    # An experiment made before (by an older doveseg, or by hand) gets the tag on its next run.
    old_id = client.create_experiment("made-before", artifact_location=(tmp_path / "old").as_uri())
    assert runs.EXPERIMENT_KIND_TAG not in client.get_experiment(old_id).tags
    with runs.training_run(cfg_in("mlflow.experiment=made-before"), "train_x", tmp_path / "run.json"):
        pass
    assert client.get_experiment(old_id).tags[runs.EXPERIMENT_KIND_TAG] == "custom_model_development"
    page = runs.experiment_page(cfg_in("mlflow.experiment=made-before"), "http://127.0.0.1:5000/")
    assert page == f"http://127.0.0.1:5000/#/experiments/{old_id}?workflowType=machine_learning"


def test_training_run_logs_the_dvc_hashed_data_as_its_dataset(cfg_in, tmp_path):
    cfg = cfg_in()
    with runs.training_run(cfg, "train_x", tmp_path / "run.json") as run:
        pass
    logged = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(run.info.run_id).inputs.dataset_inputs
    assert len(logged) == 1
    dataset = logged[0].dataset
    processed = lock_entry(cfg.data.processed_dir)
    assert dataset.name == str(cfg.data.processed_dir) and dataset.source_type == "local"
    assert dataset.digest + ".dir" == processed["md5"]  # the md5 DVC records, without ".dir"
    assert json.loads(dataset.source) == {"uri": str(cfg.data.processed_dir)}
    profile = json.loads(dataset.profile)
    assert profile == {
        "nfiles": processed["nfiles"],
        "size": processed["size"],
        "splits_dir": str(cfg.data.splits_dir),
        "splits_md5": dvc_md5(cfg.data.splits_dir),
    }
    assert [(tag.key, tag.value) for tag in logged[0].tags] == [("mlflow.data.context", "training")]

    # Other data, another digest: runs group and filter by data version.
    label = Path(cfg.data.processed_dir) / "dove_a" / "label.png"
    label.write_bytes(label.read_bytes() + b"\0")
    with runs.training_run(cfg, "train_x", tmp_path / "run.json") as other:
        pass
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    assert client.get_run(other.info.run_id).inputs.dataset_inputs[0].dataset.digest != dataset.digest
    found = client.search_runs([run.info.experiment_id], filter_string=f"dataset.digest = '{dataset.digest}'")
    assert [r.info.run_id for r in found] == [run.info.run_id]


def test_each_training_run_registers_a_version_and_names_it_in_the_run_id_file(cfg_in, tmp_path):
    cfg = cfg_in("mlflow.registered_models.paddle=tiny-net")
    versions = []
    for _ in range(2):
        with runs.training_run(cfg, "train_paddle", tmp_path / "run.json") as run:
            mlflow.paddle.log_model(
                red_detector(),
                name="paddle_model",
                registered_model_name=registry.registered_model_name(cfg, "paddle"),
                input_spec=[InputSpec([None, 3, 8, 8], "float32", "image")],
                pip_requirements=mlflow.paddle.get_default_pip_requirements(),
            )
        versions.append(registry.read_registered_version(tmp_path / "run.json"))
        client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
        assert client.get_model_version(*versions[-1]).run_id == run.info.run_id
    assert versions == [("tiny-net", "1"), ("tiny-net", "2")]

    with pytest.raises(StageError, match=r"mlflow.registered_models.paddleseg"):
        registry.registered_model_name(cfg_in("~mlflow.registered_models.paddleseg"), "paddleseg")
    (tmp_path / "old.json").write_text(json.dumps({"run_id": "abc"}))
    with pytest.raises(StageError, match=r"rerun the training stage"):
        registry.read_registered_version(tmp_path / "old.json")


def test_finished_run_gets_metrics_and_artifacts_without_moving_its_end_time(cfg_in, tmp_path):
    cfg = cfg_in()
    with runs.training_run(cfg, "train_x", tmp_path / "run.json") as run:
        runs.log_metrics({"train/loss": 1.0}, step=1)
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    before = client.get_run(run.info.run_id).info
    time.sleep(0.05)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"png")
    (tmp_path / "report.md").write_text("# report")
    finished = runs.FinishedRun(cfg, tmp_path / "run.json")
    finished.log_metrics({f"test/IoU/class_{i}": i / 1500 for i in range(1500)} | {"test/nan": float("nan")})
    finished.log_artifacts(tmp_path / "figures", "report/figures")
    finished.log_artifact(tmp_path / "report.md", "report")
    after = client.get_run(run.info.run_id)
    assert (after.info.start_time, after.info.end_time, after.info.status) == (
        before.start_time,
        before.end_time,
        "FINISHED",
    )
    assert len([k for k in after.data.metrics if k.startswith("test/IoU/")]) == 1500  # past the batch limit
    assert "test/nan" not in after.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} == {"report/figures", "report/report.md"}


URI_CASES = [
    ("sqlite:///mlflow.db", "sqlite:///{root}/mlflow.db"),
    ("sqlite:///stores/team.db?timeout=30", "sqlite:///{root}/stores/team.db?timeout=30"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("file:mlruns", "file://{root}/mlruns"),
    ("file:///abs/mlruns", "file:///abs/mlruns"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://mlflow.internal", "https://mlflow.internal"),
    ("postgresql://mlflow@db/mlflow", "postgresql://mlflow@db/mlflow"),
    ("databricks", "databricks"),
]


@pytest.mark.parametrize(("uri", "expected"), URI_CASES)
def test_relative_local_stores_resolve_against_dvc_root(uri, expected, tmp_path, monkeypatch):
    """DVC_ROOT is the parent repo of a queued experiment's temp copy: its store, not a new one there."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert mlflow_store.resolve_local_uri(uri) == expected.format(root=tmp_path)


@pytest.mark.parametrize(("uri", "expected"), URI_CASES)
def test_without_dvc_root_relative_local_stores_resolve_against_the_working_folder(
    uri, expected, tmp_path, monkeypatch
):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert mlflow_store.resolve_local_uri(uri) == expected.format(root=tmp_path)


def test_a_stage_in_a_temp_copy_tracks_to_the_project_store_names_its_run_and_records_the_configured_uri(
    tmp_path, make_cfg, monkeypatch
):
    """What a queued experiment does: run from .dvc/tmp/exps/<copy>, DVC_ROOT the project."""
    project, copy = tmp_path / "project", tmp_path / "project" / ".dvc" / "tmp" / "exps" / "run1"
    copy.mkdir(parents=True)
    data = make_dataset(copy / "data")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.setenv("DVC_EXP_NAME", "q-lr")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
    cfg = make_cfg(
        *data, "mlflow.tracking_uri=sqlite:///mlflow.db", "mlflow.artifact_location=mlruns", "mlflow.experiment=queued"
    )
    with runs.training_run(cfg, "train_x", copy / "run.json") as run:
        runs.log_metrics({"train/loss": 1.0}, step=0)
    assert not (copy / "mlflow.db").exists() and not (copy / "mlruns").exists()
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    logged = client.get_run(run.info.run_id)
    assert logged.info.run_name == "train_x · q-lr"
    assert logged.data.tags["dvc_exp_name"] == "q-lr" and logged.data.tags["dvc_exp_baseline_rev"] == "0123abc"
    assert client.get_experiment(run.info.experiment_id).artifact_location == (project / "mlruns").as_uri()
    assert json.loads((copy / "run.json").read_text())["tracking_uri"] == "sqlite:///mlflow.db"
    monkeypatch.delenv("DVC_EXP_NAME")
    assert runs.run_name("train_x") == "train_x"  # the workspace's runs, as before


def test_store_call_retries_a_locked_database_and_gives_up_on_anything_else(monkeypatch):
    monkeypatch.setattr(mlflow_store.time, "sleep", lambda seconds: None)
    answers = iter([mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")] * 2 + ["ok"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    before = mlflow_store.STORE_RETRIES["count"]
    assert mlflow_store.store_call(flaky) == "ok" and mlflow_store.STORE_RETRIES["count"] == before + 2
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"locked"):
        mlflow_store.store_call(flaky_forever, attempts=3)
    with pytest.raises(ValueError):
        mlflow_store.store_call(int, "not a number")


def flaky_forever():
    raise mlflow.exceptions.MlflowException("database is locked")
