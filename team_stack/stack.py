"""The stack under one folder (``.team/``): its ports, its secrets (0600, generated once), up, down, status."""

from __future__ import annotations

import json
import secrets
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from team_stack import servers
from team_stack.accounts import set_up_team
from team_stack.servers import StackError

DEFAULT_BASE_PORT = 15400
# Every port the stack listens on, as an offset from the base port (SeaweedFS's admin also takes admin+10000).
PORT_OFFSETS = {
    "mlflow": 0,
    "postgres": 1,
    "s3": 2,
    "s3_grpc": 3,
    "weed_master": 4,
    "weed_master_grpc": 5,
    "weed_volume": 6,
    "weed_volume_grpc": 7,
    "weed_filer": 8,
    "weed_filer_grpc": 9,
    "weed_admin": 10,
}
DVC_BUCKET, ARTIFACT_BUCKET = "doveseg-dvc", "doveseg-mlflow"
DVC_REMOTE = "team"
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # as stages/tracking/runs.py

TOKEN_ALPHABET = string.ascii_letters + string.digits


def token(length: int = 32) -> str:
    """A password or key that needs no quoting anywhere it goes: shell exports, URIs, CLI arguments."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is not taken
        try:
            sock.bind(("127.0.0.1", port))
            return False
        except OSError:
            return True


class Stack:
    def __init__(self, folder: Path, base_port: int | None = None, users: list[str] | None = None):
        self.folder = folder.resolve()
        self.state_file, self.secrets_file = self.folder / "stack.json", self.folder / "secrets.json"
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.base_port = base_port or state.get("base_port") or DEFAULT_BASE_PORT
        self.users = state.get("users") or users or ["alice", "bob"]
        if not 1024 < self.base_port < 65535 - 10010:
            raise StackError(f"--base-port {self.base_port}: choose one between 1025 and 55524")
        self.ports = {name: self.base_port + offset for name, offset in PORT_OFFSETS.items()}
        self.mlflow_uri = f"http://127.0.0.1:{self.ports['mlflow']}"
        self.s3_uri = f"http://127.0.0.1:{self.ports['s3']}"

    # --- secrets: generated on the first up, kept in .team/secrets.json (0600), never printed

    def _secrets(self) -> dict:
        if self.secrets_file.exists():
            return json.loads(self.secrets_file.read_text())
        created = {
            "postgres": token(),
            "mlflow_db": token(),
            "mlflow_admin": token(),
            "flask_secret": token(),
            "s3": {
                name: {"key": "K" + secrets.token_hex(10).upper(), "secret": token()}
                for name in ["mlflow", *self.users]
            },
            "users": {name: token() for name in self.users},
        }
        self.secrets_file.touch(mode=0o600)
        self.secrets_file.write_text(json.dumps(created, indent=1))
        return created

    def up(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o711)  # the postgres user passes through to its cluster; nobody else lists it
        self.state_file.write_text(json.dumps({"base_port": self.base_port, "users": self.users}))
        secret = self._secrets()
        pg, s3, ml = self.folder / "postgres", self.folder / "s3", self.folder / "mlflow"
        running = {
            "postgres": pg.exists() and servers.postgres_running(pg),
            "mlflow": servers.running_pid(ml / "mlflow.pid") is not None,
            "s3": servers.running_pid(s3 / "weed.pid") is not None,
        }
        for name, port in self.ports.items():  # each port, unless the server of ours that holds it runs
            owner = name if name in running else "s3"
            for taken in (port, port + 10000) if name == "weed_admin" else (port,):
                if not running[owner] and port_taken(taken):
                    raise StackError(
                        f"port {taken} ({name}) on 127.0.0.1 is taken; free it or choose other "
                        "ports: python -m team_stack up --base-port N"
                    )
        if not running["postgres"]:
            servers.postgres_start(pg, self.ports["postgres"], secret["postgres"])
        servers.postgres_databases(
            self.ports["postgres"], secret["postgres"], "mlflow", secret["mlflow_db"], ["mlflow", "mlflow_auth"]
        )
        s3.mkdir(exist_ok=True)
        process = None
        if not running["s3"]:
            identities = {
                "mlflow": (secret["s3"]["mlflow"]["key"], secret["s3"]["mlflow"]["secret"], [ARTIFACT_BUCKET])
            }
            identities.update(
                {user: (secret["s3"][user]["key"], secret["s3"][user]["secret"], [DVC_BUCKET]) for user in self.users}
            )
            process = servers.seaweed_start(s3, self.ports, identities, [DVC_BUCKET, ARTIFACT_BUCKET])
        keys = secret["s3"]["mlflow"]
        servers.wait_until(
            lambda: servers.bucket_ready(self.s3_uri, keys["key"], keys["secret"], ARTIFACT_BUCKET),
            f"SeaweedFS S3 on {self.s3_uri}",
            90,
            s3 / "weed.log",
            process,
        )
        process = None
        if not running["mlflow"]:
            db = f"127.0.0.1:{self.ports['postgres']}"
            process = servers.mlflow_start(
                ml,
                self.ports["mlflow"],
                f"postgresql+psycopg2://mlflow@{db}/mlflow",
                f"postgresql+psycopg2://mlflow@{db}/mlflow_auth",
                f"s3://{ARTIFACT_BUCKET}/",
                {
                    "PGPASSWORD": secret["mlflow_db"],
                    "MLFLOW_AUTH_ADMIN_PASSWORD": secret["mlflow_admin"],
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": secret["flask_secret"],
                    "MLFLOW_S3_ENDPOINT_URL": self.s3_uri,
                    "AWS_ACCESS_KEY_ID": keys["key"],
                    "AWS_SECRET_ACCESS_KEY": keys["secret"],
                    "AWS_DEFAULT_REGION": "us-east-1",
                },
            )
        servers.wait_until(
            lambda: servers.http_answers(self.mlflow_uri + "/health"),
            f"MLflow on {self.mlflow_uri}",
            180,
            ml / "mlflow.log",
            process,
        )
        experiment, models = self._project_names()
        set_up_team(self.mlflow_uri, secret["mlflow_admin"], secret["users"], experiment, EXPERIMENT_KIND_TAGS, models)
        self._write_env_files(secret)
        remote = self._configure_dvc_remote(secret)
        self._print_where(remote)

    def _project_names(self) -> tuple[str, list[str]]:
        params = Path("params.yaml")
        mlflow = yaml.safe_load(params.read_text())["mlflow"] if params.exists() else {}
        return (
            mlflow.get("experiment", "doveseg"),
            list(
                (mlflow.get("registered_models") or {"paddle": "doveseg-dovenet", "paddleseg": "doveseg-unet"}).values()
            ),
        )

    def env_file(self, user: str) -> Path:
        return self.folder / f"{user}.env"

    def _write_env_files(self, secret: dict) -> None:
        for user in self.users:
            lines = {
                "MLFLOW_TRACKING_URI": self.mlflow_uri,
                "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": secret["users"][user],
                "TEAM_DVC_URL": f"s3://{DVC_BUCKET}/dvc",
                "TEAM_S3_ENDPOINT": self.s3_uri,
                "TEAM_S3_KEY_ID": secret["s3"][user]["key"],
                "TEAM_S3_SECRET": secret["s3"][user]["secret"],
            }
            path = self.env_file(user)
            path.touch(mode=0o600)
            path.write_text("".join(f"export {key}={value}\n" for key, value in lines.items()))

    def _configure_dvc_remote(self, secret: dict) -> str | None:
        """The remote `team` of the checkout it runs in, for the first user: url, endpoint and keys all in
        .dvc/config.local, so git sees no change (a team commits url and endpoint: README)."""
        if not Path(".dvc").is_dir():
            return None
        user = self.users[0]
        dvc = [str(servers.BIN / "dvc"), "remote"]
        # "--" before each value: a secret may begin with "-" (one from an older .team/secrets.json can)
        for argv in (
            ["add", "--local", "-f", DVC_REMOTE, "--", f"s3://{DVC_BUCKET}/dvc"],
            ["modify", "--local", DVC_REMOTE, "endpointurl", "--", self.s3_uri],
            ["modify", "--local", DVC_REMOTE, "access_key_id", "--", secret["s3"][user]["key"]],
            ["modify", "--local", DVC_REMOTE, "secret_access_key", "--", secret["s3"][user]["secret"]],
        ):
            subprocess.run(dvc + argv, check=True, capture_output=True)
        return user

    def _print_where(self, remote_user: str | None) -> None:
        print(
            f"PostgreSQL  127.0.0.1:{self.ports['postgres']}  databases mlflow, mlflow_auth  ({self.folder}/postgres)"
        )
        print(f"S3          {self.s3_uri}  buckets {DVC_BUCKET} (DVC), {ARTIFACT_BUCKET} (MLflow artifacts)")
        print(f"MLflow      {self.mlflow_uri}  users admin, {', '.join(self.users)}")
        for user in self.users:
            print(f"  {user}: source {self.env_file(user)}")
        if remote_user:
            print(f"DVC remote  {DVC_REMOTE} (this checkout, as {remote_user}): dvc push -r {DVC_REMOTE}")
        print(f"Secrets     {self.secrets_file} (admin password included; 0600)")

    def down(self) -> None:
        pg, s3, ml = self.folder / "postgres", self.folder / "s3", self.folder / "mlflow"
        stopped = []
        for name, stop in (
            ("MLflow", lambda: servers.stop_pid(ml / "mlflow.pid")),
            ("SeaweedFS", lambda: servers.stop_pid(s3 / "weed.pid")),
            ("PostgreSQL", lambda: servers.postgres_stop(pg)),
        ):
            started = time.monotonic()
            if stop():
                stopped.append(f"{name} ({time.monotonic() - started:.0f} s)")
        for port in [*self.ports.values(), self.ports["weed_admin"] + 10000]:  # weed's gRPC sockets stay behind
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'} (data kept in {self.folder})")

    def status(self) -> bool:
        pg, s3, ml = self.folder / "postgres", self.folder / "s3", self.folder / "mlflow"
        states = {
            f"PostgreSQL 127.0.0.1:{self.ports['postgres']}": pg.exists() and servers.postgres_running(pg),
            f"S3 {self.s3_uri}": servers.running_pid(s3 / "weed.pid") is not None,
            f"MLflow {self.mlflow_uri}": servers.running_pid(ml / "mlflow.pid") is not None,
        }
        for name, running in states.items():
            print(f"{name}: {'running' if running else 'stopped'}")
        return all(states.values())
