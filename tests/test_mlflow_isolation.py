"""conftest's mlflow_tracking_uri_from_the_environment: one test's in-process stage run, which sets MLflow's
process-wide tracking URI, must not shadow a later test's MLFLOW_TRACKING_URI. The two tests run in file order."""

import os

import mlflow

from stages.tracking.store import _use_tracking_uri


def test_a_stage_sets_mlflows_process_wide_uri(tmp_path):
    _use_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # what every stage does before its MLflow calls
    assert mlflow.get_tracking_uri().endswith("mlflow.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ or not os.environ["MLFLOW_TRACKING_URI"].endswith("mlflow.db")


def test_the_next_test_sees_its_own_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert mlflow.get_tracking_uri() == "http://127.0.0.1:9"
    assert mlflow.get_registry_uri() == "http://127.0.0.1:9"  # models:/ URIs resolve through it
