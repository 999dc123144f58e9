"""Start, wait for and stop the three servers, each bound to 127.0.0.1 (pinned in pyproject's `team` extra)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _postgres_bin() -> Path:
    """Debian's PostgreSQL (15 on Debian 12, the version measured), or TEAM_PG_BIN."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return Path(os.environ.get("TEAM_PG_BIN") or (found[-1].parent if found else "/usr/lib/postgresql/15/bin"))


PG_BIN = _postgres_bin()
BIN = Path(sys.executable).parent  # the venv's weed, mlflow and dvc


class StackError(Exception):
    """One line saying what failed and what to do."""


def wait_until(check, what: str, timeout_s: float, log: Path | None = None, process=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if process is not None and process.poll() is not None:
            raise StackError(f"{what} exited with {process.returncode} while starting; see {log}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} did not answer within {timeout_s:.0f} s; see {log}")
        time.sleep(0.5)


def http_answers(url: str, expect: int | None = 200) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return expect is None or response.status == expect
    except urllib.error.HTTPError:
        return expect is None  # any HTTP answer means the server is up
    except OSError:
        return False


# --- processes we start ourselves: a pid file each, a session of their own (so we stop their children too)


def spawn(argv: list[str], pid_file: Path, log: Path, env: dict) -> subprocess.Popen:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, stdin=subprocess.DEVNULL
        )
    pid_file.write_text(str(process.pid))
    return process


def running_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not running
        return None if stat.read().rsplit(")", 1)[1].split()[0] == "Z" else pid


def stop_pid(pid_file: Path, timeout_s: float = 30) -> bool:
    pid = running_pid(pid_file)
    if pid is not None:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while running_pid(pid_file) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if running_pid(pid_file) is not None:
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return pid is not None


# --- PostgreSQL: a cluster of its own, password logins only, TCP on 127.0.0.1 (no unix socket)


def _as_postgres(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run its tools as the `postgres` user Debian's package creates.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _chown_to_postgres(*paths: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", *map(str, paths)], check=True)


def postgres_start(folder: Path, port: int, superuser_password: str) -> None:
    data, log = folder / "data", folder / "postgres.log"
    if not (PG_BIN / "pg_ctl").exists():
        raise StackError(f"PostgreSQL is not installed ({PG_BIN}); apt-get install -y postgresql")
    folder.mkdir(parents=True, exist_ok=True)
    if not (data / "PG_VERSION").exists():
        pwfile = folder / "initdb.pw"
        pwfile.write_text(superuser_password)
        pwfile.chmod(0o600)
        _chown_to_postgres(folder)
        result = subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                ]
            ),
            capture_output=True,
            text=True,
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise StackError(
                f"initdb {data} failed: {result.stderr.strip().splitlines()[-1:]} "
                "(the postgres user must be able to reach this folder)"
            )
    _chown_to_postgres(folder)
    options = f"-h 127.0.0.1 -p {port} -c unix_socket_directories=''"
    result = subprocess.run(
        _as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"]
        ),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise StackError(f"PostgreSQL did not start on 127.0.0.1:{port}; see {log}")


def postgres_running(folder: Path) -> bool:
    result = subprocess.run(
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "status"]), capture_output=True, text=True
    )
    return result.returncode == 0


def postgres_stop(folder: Path) -> bool:
    if not (folder / "data" / "postmaster.pid").exists() or not postgres_running(folder):
        return False
    subprocess.run(
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "stop"]),
        capture_output=True,
        check=True,
    )
    return True


def postgres_databases(port: int, superuser_password: str, role: str, role_password: str, databases: list[str]) -> None:
    """The MLflow role and its databases, created once (idempotent)."""
    import psycopg2

    connection = psycopg2.connect(
        host="127.0.0.1", port=port, user="postgres", password=superuser_password, dbname="postgres"
    )
    connection.autocommit = True
    with connection.cursor() as cursor:  # not `with connection`: that opens a transaction
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD %s', (role_password,))
        for name in databases:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    connection.close()


# --- SeaweedFS: `weed mini` (master, volume, filer, S3 in one process), S3 identities from a JSON file


def seaweed_start(folder: Path, ports: dict, identities: dict, buckets: list[str]) -> subprocess.Popen:
    """``identities``: name -> (access key, secret key, buckets it may read, write and list)."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": name,
                        "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": [f"{action}:{bucket}" for bucket in allowed for action in ("Read", "Write", "List")],
                    }
                    for name, (key, secret, allowed) in identities.items()
                ]
            }
        )
    )
    config.chmod(0o600)
    p = ports
    argv = [
        str(BIN / "weed"),
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        f"-bucket={','.join(buckets)}",
        "-master.telemetry=false",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={p['s3_grpc']}",
        f"-master.port={p['weed_master']}",
        f"-master.port.grpc={p['weed_master_grpc']}",
        f"-volume.port={p['weed_volume']}",
        f"-volume.port.grpc={p['weed_volume_grpc']}",
        f"-filer.port={p['weed_filer']}",
        f"-filer.port.grpc={p['weed_filer_grpc']}",
        f"-admin.port={p['weed_admin']}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.localSocket={folder / 's3.sock'}",
    ]
    return spawn(argv, folder / "weed.pid", folder / "weed.log", dict(os.environ))


def bucket_ready(endpoint: str, key: str, secret: str, bucket: str) -> bool:
    import boto3
    import botocore

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False


# --- MLflow: basic-auth app, runs and users in PostgreSQL, artifacts proxied to the S3 bucket


def mlflow_start(folder: Path, port: int, backend_uri: str, auth_uri: str, artifacts: str, env: dict):
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {auth_uri}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # one worker, so no stale logins across workers; else each request hashes the password
        "auth_cache_ttl_seconds = 60\n"
    )
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts,
    ]
    # MLflow's GenAI job runner (about ten huey worker processes) serves nothing a training team uses here
    return spawn(
        argv,
        folder / "mlflow.pid",
        folder / "mlflow.log",
        {**os.environ, **env, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
