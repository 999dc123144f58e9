"""`make mlflow-ui`, as the summary and the docs tell people to run it: it prints the experiment's page in the
Model training view and serves the project's store there."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from conftest import REPO_ROOT
from mlflow_server import free_port


@pytest.mark.slow  # mlflow ui takes 10-20 s to start on 2 cores
def test_make_mlflow_ui_prints_the_experiments_page_and_serves_the_store(tmp_path):
    for name in ("Makefile", "params.yaml"):
        (tmp_path / name).write_text((REPO_ROOT / name).read_text())
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    experiment = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("doveseg")
    port = free_port()
    venv = Path(sys.executable).parent
    process = subprocess.Popen(
        ["make", "mlflow-ui", f"UI_PORT={port}", "-o", "setup", "-o", ".venv/bin/.installed"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PATH": f"{venv}:{os.environ['PATH']}", "PYTHONPATH": str(REPO_ROOT)},
        start_new_session=True,
    )
    try:
        first = process.stdout.readline()
        assert first.strip() == f"Open http://127.0.0.1:{port}/#/experiments/{experiment}?workflowType=machine_learning"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={experiment}", timeout=2
                ) as answer:
                    assert re.search(rb'"name": ?"doveseg"', answer.read())
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "make mlflow-ui did not serve"
                time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
