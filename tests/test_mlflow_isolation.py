"""conftest's mlflow_tracking_uri_per_test: one test's mlflow.set_tracking_uri (every in-process stage run
makes one) must not shadow a later test's MLFLOW_TRACKING_URI. The two tests run in file order."""
import mlflow


def test_a_stage_like_call_sets_mlflows_process_wide_uri(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    assert mlflow.get_tracking_uri().endswith("mlflow.db")


def test_the_next_test_sees_its_own_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert mlflow.get_tracking_uri() == "http://127.0.0.1:9"
    assert mlflow.get_registry_uri() == "http://127.0.0.1:9"  # models:/ URIs resolve through it
