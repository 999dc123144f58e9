"""Shared test fixtures. Stage tests build a cfg from the repo's params.yaml plus overrides."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from stages.common.config import load_params

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def mlflow_tracking_uri_from_the_environment():
    """Each test starts as a fresh process would, with MLflow reading MLFLOW_TRACKING_URI. Stages run
    in-process (in tests and in module-scoped fixtures) call mlflow.set_tracking_uri, which MLflow keeps
    for the whole process and prefers to the environment: left alone it would send a later test's MLflow
    calls (models:/ URIs included) to an earlier test's store."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    if tracking_utils._tracking_uri is not None:  # None: nothing set it, MLflow reads the environment
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(None)  # the public setter: it also resets MLflow's tracer provider
        if env_uri is not None:  # the setter drops MLFLOW_TRACKING_URI; keep the environment as it was
            os.environ["MLFLOW_TRACKING_URI"] = env_uri
    yield


@pytest.fixture
def make_cfg():
    """make_cfg("data.raw_dir=...", ...) -> the params.yaml config with those overrides."""

    def _make(*overrides: str):
        return load_params(list(overrides), REPO_ROOT)

    return _make


# --- labelme's example annotations (tests/test_labelme_shapes.py) ------------------------------------
# The labelme sdist on PyPI ships examples/**/*.json (every shape type, a mask included). They are
# extracted once into .cache/labelme-sdist/ (gitignored), downloading the sdist with pip when needed.

LABELME_SDIST_CACHE = REPO_ROOT / ".cache" / "labelme-sdist"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def fetch_labelme_examples(cache_dir: Path = LABELME_SDIST_CACHE) -> Path:
    """The examples/ folder of the sdist of the installed labelme (the test oracle), cached in cache_dir.

    Raises RuntimeError (or OSError) when the sdist can be neither found nor downloaded.
    """
    version = importlib.metadata.version("labelme")
    root = f"labelme-{version}"
    examples = cache_dir / root / "examples"
    if examples.is_dir():
        return examples
    cache_dir.mkdir(parents=True, exist_ok=True)
    sdist = cache_dir / f"{root}.tar.gz"
    if not sdist.is_file():
        with tempfile.TemporaryDirectory(dir=cache_dir) as download_dir:
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"labelme=={version}",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--disable-pip-version-check",
                "-d",
                download_dir,
            ]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"`{' '.join(command)}` timed out") from None
            downloaded = Path(download_dir) / sdist.name
            if done.returncode != 0 or not downloaded.is_file():
                raise RuntimeError(f"`{' '.join(command)}` failed:\n{done.stderr[-2000:]}")
            os.replace(downloaded, sdist)
    # Extract into a temporary folder, then rename: a half-extracted cache is never mistaken for a whole one.
    with tempfile.TemporaryDirectory(dir=cache_dir) as extract_dir:
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(f"{root}/examples/")]
            archive.extractall(extract_dir, members=members, filter="data")
        try:
            os.replace(Path(extract_dir) / root, cache_dir / root)
        except OSError:
            if not examples.is_dir():  # not a concurrent session that got there first
                raise
    return examples


@pytest.fixture(scope="session")
def labelme_examples_dir() -> Path:
    """labelme's examples/ folder; skipped when it cannot be fetched, except in CI (env CI set), where it fails."""
    try:
        return fetch_labelme_examples()
    except (RuntimeError, OSError, tarfile.TarError, importlib.metadata.PackageNotFoundError) as err:
        message = f"labelme's example annotations are unavailable: {err}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
