"""The MLflow store: which one (params, MLFLOW_TRACKING_URI, relative paths resolved against the project
root), whether it can be used (reachable, the login accepted), and calls retried while SQLite is busy."""

from __future__ import annotations

import os
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import mlflow

from stages.common.config import StageError

# MLflow retries an unreachable server for minutes by default; fail in seconds instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def configured_tracking_uri(cfg) -> str:
    """The store as configured (MLFLOW_TRACKING_URI, else mlflow.tracking_uri), before resolving."""
    return os.environ.get("MLFLOW_TRACKING_URI") or str(cfg.mlflow.tracking_uri)


def tracking_uri(cfg) -> str:
    """The store every stage, tool and test uses: the configured URI, a relative local one resolved
    against the project root (resolve_local_uri)."""
    return resolve_local_uri(configured_tracking_uri(cfg))


def project_root() -> Path:
    """The DVC project's root, where relative local MLflow locations live. DVC sets DVC_ROOT for every
    stage it runs, to the parent repo's root for queued and --temp experiments, which run in a throwaway
    copy (.dvc/tmp/exps/...): without it each would write a new, empty store there. A stage run by
    hand runs from the repo root (stage_main insists on ./params.yaml)."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def resolve_local_uri(uri: str) -> str:
    """``sqlite:///mlflow.db`` -> ``sqlite:////<project root>/mlflow.db`` (a relative ``file:`` store
    likewise); absolute paths, in-memory databases and server URIs stay as they are."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///"):
        path, query = ([*uri[len("sqlite:///") :].split("?", 1), ""])[:2]
        if path in ("", ":memory:") or Path(path).is_absolute():
            return uri
        return f"sqlite:///{project_root() / path}" + (f"?{query}" if query else "")
    if parsed.scheme == "file" and not parsed.netloc and not Path(parsed.path).is_absolute():
        return (project_root() / parsed.path).as_uri()
    return uri


def artifact_root(cfg) -> str:
    """mlflow.artifact_location as a URI for a new experiment on a local store (relative: to the project root)."""
    location = str(cfg.mlflow.artifact_location)
    if len(urlparse(location).scheme) > 1:  # s3://, file://, ... (one letter: a Windows drive)
        return location
    return (project_root() / location).resolve().as_uri()


def is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "", "file")


def _use_tracking_uri(uri: str) -> None:
    """mlflow.set_tracking_uri, without its side effect of exporting MLFLOW_TRACKING_URI: that would turn
    one stage's store into every later stage's override in the same process (tests, notebooks)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


STORE_RETRIES = {"count": 0}  # how often store_call retried in this process (bench/mlflow_sqlite_writers.py)


def store_call(fn, *args, attempts: int = 6, **kwargs):
    """``fn(*args, **kwargs)``, retried with a growing pause while SQLite answers "database is locked".
    Parallel experiments (`dvc queue start -j 2`) write to one SQLite store; MLflow waits up to 20 s for
    another writer (its busy timeout), and bench/mlflow_sqlite_writers.py measured no call that needed
    more with 2-4 writers; this covers a longer write (a busy disk, a reader holding the file). A call
    that failed so wrote nothing (its transaction rolled back), so calling it again is safe."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException or SQLAlchemy's OperationalError, depending on the call
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            STORE_RETRIES["count"] += 1
            time.sleep(min(0.05 * 2**attempt, 2.0) * (1 + random.random()))


def ensure_reachable(uri: str, timeout_s: float = 5) -> None:
    """Raise StageError within about ``timeout_s`` when the tracking store cannot be used."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as response:
                if response.status != 200:
                    raise StageError(f"MLflow server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            raise StageError(
                f"MLflow tracking server {uri} is unreachable ({err}); start it, or set "
                "MLFLOW_TRACKING_URI / mlflow.tracking_uri to a reachable store"
            ) from None
        _check_login(uri, timeout_s)
    elif parsed.scheme == "sqlite":
        db_path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if db_path is not None and str(db_path) not in ("", ":memory:"):
            folder = db_path.parent if str(db_path.parent) else Path(".")
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise StageError(f"MLflow store {uri}: folder {folder} does not exist or is not writable")


def _check_login(uri: str, timeout_s: float) -> None:
    """A server with logins (mlflow server --app-name basic-auth) answers /health to anyone: ask it for
    something that needs the login in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/search",
            "GET",
            params={"max_results": 1},
            max_retries=0,
            timeout=timeout_s,
        )
    except mlflow.exceptions.MlflowException as err:
        raise StageError(f"MLflow tracking server {uri}: {err}") from None
    if response.status_code == 401:
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        raise StageError(
            f"MLflow tracking server {uri} refused the login "
            f"{'of ' + repr(who) if who else '(none given)'}: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to your account on it"
        )


def open_store(cfg) -> str:
    """Check cfg's store and make it MLflow's current one; its URI."""
    uri = tracking_uri(cfg)
    ensure_reachable(uri, float(cfg.mlflow.connect_timeout_s))
    _use_tracking_uri(uri)
    return uri


def client(cfg) -> mlflow.MlflowClient:
    """A client on cfg's store (checked first)."""
    return mlflow.MlflowClient(open_store(cfg))
