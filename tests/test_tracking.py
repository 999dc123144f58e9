import mlflow

from stages.training import tracking


def test_a_second_store_in_the_same_process_gets_its_own_runs(tmp_path, make_cfg, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; it must not become the next stage's override."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "splits").mkdir()
    for name in ("a", "b"):
        uri = f"sqlite:///{tmp_path / name}.db"
        cfg = make_cfg(f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path / name}",
                       f"data.splits_dir={tmp_path / 'splits'}")
        with tracking.training_run(cfg, "train_x", tmp_path / f"{name}.json") as run:
            tracking.log_metrics({"train/loss": 1.0}, step=0)
        assert mlflow.MlflowClient(uri).get_run(run.info.run_id).data.metrics == {"train/loss": 1.0}
        assert tracking.read_run_id(tmp_path / f"{name}.json") == run.info.run_id
