"""A real `mlflow models serve` on 127.0.0.1 (free port) for the tests that serve the photo segmenter, and the
requests a client sends it (MLflow's JSON, photo files base64-encoded)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from mlflow_server import wait_until_answering

VENV_BIN = str(Path(sys.executable).parent)


def serve_command(model_uri: str, port: int) -> str:
    return f'mlflow models serve -m "{model_uri}" --env-manager local -p {port}'


def serving_env(tracking_uri: str | None = None) -> dict[str, str]:
    """The environment of a shell with the venv activated (MLflow's server starts `uvicorn` from the PATH),
    on ``tracking_uri`` or, without it, on MLflow's default store (./mlflow.db)."""
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


@contextlib.contextmanager
def model_server(
    command: str, port: int, cwd: Path, env: dict[str, str], log: Path, timeout_s: float = 180
) -> Iterator[str]:
    """Run ``command`` (a shell line that serves a model on ``port``) in ``cwd``; yield its URL once /ping
    answers. The server and its workers are stopped at the end (their own process group)."""
    with server_process(command, port, cwd, env, log, timeout_s) as (url, _):
        yield url


@contextlib.contextmanager
def server_process(
    command: str, port: int, cwd: Path, env: dict[str, str], log: Path, timeout_s: float = 180
) -> Iterator[tuple[str, subprocess.Popen]]:
    """model_server's (URL, the shell process at the root of the server's process tree)."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as output:
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until_answering(url + "/ping", process, timeout_s, f"`{command}`", log)
            yield url, process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def photos_request(photos: list[bytes]) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(data).decode()] for data in photos]}}


def post(url: str, body: dict, timeout_s: float = 120) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of a POST to the server's /invocations; an answer that is not JSON (MLflow's
    504 on a request over its time limit) as {"text": ...}."""
    request = urllib.request.Request(
        url + "/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, {"text": text.decode(errors="replace")}


def masks(answer: dict) -> list[bytes]:
    return [base64.b64decode(row["mask"]) for row in answer["predictions"]]
