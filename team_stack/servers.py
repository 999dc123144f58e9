"""Start, wait for and stop the three servers, each bound to 127.0.0.1 (pinned in pyproject's `team` extra)."""

from __future__ import annotations

import hashlib
import os
import pwd
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from team_stack.private import private_folder, write_private


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


def spawn(argv: list[str], pid_file: Path, log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    """Start a server in a session of its own, with umask 077: what it creates (sockets, data) is its own."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            umask=0o077,
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


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("the postgres user is missing: apt-get install -y postgresql") from None


def _as_postgres(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run its tools as the `postgres` user Debian's package creates.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def postgres_cluster(folder: Path) -> Path:
    """Where the cluster lives: ``folder`` (.team/postgres), unless we are root and the postgres user, who
    runs it, cannot enter ``folder``'s parent (a clone under a 0700 folder: root's home, a mktemp -d): then a
    folder of the postgres user's home named after ``folder``."""
    if os.geteuid() != 0 or subprocess.run(_as_postgres(["test", "-x", str(folder.parent)])).returncode == 0:
        return folder
    return Path(_postgres_user().pw_dir) / "doveseg-team" / hashlib.sha256(str(folder).encode()).hexdigest()[:12]


def _make_cluster_folder(cluster: Path) -> tuple[int, int] | None:
    """The cluster's folder, 0700 and the postgres user's when we are root. Returns that owner (or None)."""
    owner = None
    if os.geteuid() == 0:
        user = _postgres_user()
        owner = (user.pw_uid, user.pw_gid)
    for path in reversed([cluster, *cluster.parents]):
        if not path.exists():
            path.mkdir(mode=0o700)
            if owner:
                os.chown(path, *owner)
    return owner


def postgres_start(folder: Path, port: int, superuser_password: str) -> None:
    if not (PG_BIN / "pg_ctl").exists():
        raise StackError(f"PostgreSQL is not installed ({PG_BIN}); apt-get install -y postgresql")
    cluster = postgres_cluster(folder)
    data, log = cluster / "data", cluster / "postgres.log"
    owner = _make_cluster_folder(cluster)
    if not (data / "PG_VERSION").exists():
        pwfile = cluster / "initdb.pw"
        write_private(pwfile, superuser_password, owner)
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256"]
        result = subprocess.run(
            _as_postgres([*initdb, f"--pwfile={pwfile}", "-E", "UTF8"]), capture_output=True, text=True
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise StackError(f"initdb {data} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
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
    data = postgres_cluster(folder) / "data"
    if not data.exists():
        return False
    result = subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "status"]), capture_output=True)
    return result.returncode == 0


def postgres_stop(folder: Path) -> bool:
    data = postgres_cluster(folder) / "data"
    if not (data / "postmaster.pid").exists() or not postgres_running(folder):
        return False
    subprocess.run(
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
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


# --- MLflow: basic-auth app, runs and users in PostgreSQL, artifacts proxied to the S3 bucket


AUTHORIZATION_FUNCTION = "team_stack.mlflow_auth:authenticate_request"  # basic-auth's, renames for the admin only
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # where the server's workers import team_stack from


def mlflow_start(folder: Path, port: int, backend_uri: str, auth_uri: str, artifacts: str, env: dict):
    private_folder(folder)
    ini = folder / "basic_auth.ini"
    write_private(
        ini,
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {auth_uri}\nadmin_username = admin\n"
        f"authorization_function = {AUTHORIZATION_FUNCTION}\n"
        # one worker, so no stale logins across workers; else each request hashes the password
        "auth_cache_ttl_seconds = 60\n",
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
    python_path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    # MLflow's GenAI job runner (about ten huey worker processes) serves nothing a training team uses here
    return spawn(
        argv,
        folder / "mlflow.pid",
        folder / "mlflow.log",
        {
            **os.environ,
            **env,
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONPATH": python_path,
        },
    )
