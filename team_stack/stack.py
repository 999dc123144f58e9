"""The stack under one folder (``.team/``): its ports, its secrets (0600 from their first byte, generated once),
up, down, status."""

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

from team_stack import seaweed, servers
from team_stack.accounts import set_up_team
from team_stack.private import private_folder, write_private
from team_stack.servers import StackError

DEFAULT_BASE_PORT = 15400
# Every port the stack listens on, as an offset from the base port
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
    "weed_admin_grpc": 11,
}
DVC_BUCKET, ARTIFACT_BUCKET = "doveseg-dvc", "doveseg-mlflow"
# params.yaml's mlflow.registered_models, when it has none (as stages/tracking/registry.py names them)
DEFAULT_REGISTERED_MODELS = {
    "paddle": "doveseg-dovenet",
    "paddleseg": "doveseg-paddleseg",
    "serving": "doveseg-segmenter",
}
DVC_REMOTE, S3_PROFILE = "team", "doveseg-team"
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
        top = 65535 - max(PORT_OFFSETS.values())
        if not 1024 < self.base_port <= top:
            raise StackError(f"--base-port {self.base_port}: choose one between 1025 and {top}")
        self.ports = {name: self.base_port + offset for name, offset in PORT_OFFSETS.items()}
        self.mlflow_uri = f"http://127.0.0.1:{self.ports['mlflow']}"
        self.s3_uri = f"http://127.0.0.1:{self.ports['s3']}"

    # --- secrets: generated on the first up, kept in .team/secrets.json (0600), never printed

    def _secrets(self) -> dict:
        """The stack's secrets; any that an older secrets.json lacks are added to it."""
        stored = json.loads(self.secrets_file.read_text()) if self.secrets_file.exists() else {}
        wanted = {
            "postgres": token(),
            "mlflow_db": token(),
            "mlflow_admin": token(),
            "flask_secret": token(),
            "s3": {
                name: {"key": "K" + secrets.token_hex(10).upper(), "secret": token()}
                for name in ["mlflow", *self.users]
            },
            "users": {name: token() for name in self.users},
            "seaweed_jwt": {section: token() for section in seaweed.JWT_KEYS},
        }
        merged = {**wanted, **stored}
        if merged != stored:
            write_private(self.secrets_file, json.dumps(merged, indent=1))
        return merged

    def credentials_file(self, user: str) -> Path:
        """The user's S3 key, in an AWS shared-credentials file (profile S3_PROFILE) DVC's remote reads."""
        return self.folder / f"{user}.s3"

    def up(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o711)  # the postgres user may pass through to its cluster; nobody else lists it
        self.state_file.write_text(json.dumps({"base_port": self.base_port, "users": self.users}))
        secret = self._secrets()
        pg, s3, ml = self.folder / "postgres", self.folder / "s3", self.folder / "mlflow"
        running = {
            "postgres": servers.postgres_running(pg),
            "mlflow": servers.running_pid(ml / "mlflow.pid") is not None,
            "s3": servers.running_pid(s3 / "weed.pid") is not None,
        }
        for name, port in self.ports.items():  # each port, unless the server of ours that holds it runs
            owner = name if name in running else "s3"
            if not running[owner] and port_taken(port):
                raise StackError(
                    f"port {port} ({name}) on 127.0.0.1 is taken; free it or choose other "
                    "ports: python -m team_stack up --base-port N"
                )
        if not running["postgres"]:
            servers.postgres_start(pg, self.ports["postgres"], secret["postgres"])
        servers.postgres_databases(
            self.ports["postgres"], secret["postgres"], "mlflow", secret["mlflow_db"], ["mlflow", "mlflow_auth"]
        )
        private_folder(s3)
        process = None
        if not running["s3"]:
            identities = {
                "mlflow": (secret["s3"]["mlflow"]["key"], secret["s3"]["mlflow"]["secret"], [ARTIFACT_BUCKET])
            }
            identities.update(
                {user: (secret["s3"][user]["key"], secret["s3"][user]["secret"], [DVC_BUCKET]) for user in self.users}
            )
            process = seaweed.seaweed_start(
                s3, self.ports, identities, [DVC_BUCKET, ARTIFACT_BUCKET], secret["seaweed_jwt"]
            )
        keys = secret["s3"]["mlflow"]
        servers.wait_until(
            lambda: seaweed.bucket_ready(self.s3_uri, keys["key"], keys["secret"], ARTIFACT_BUCKET),
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
        remote = self._configure_dvc_remote()
        self._print_where(remote)

    def _project_names(self) -> tuple[str, list[str]]:
        params = Path("params.yaml")
        mlflow = yaml.safe_load(params.read_text())["mlflow"] if params.exists() else {}
        return (
            mlflow.get("experiment", "doveseg"),
            list((mlflow.get("registered_models") or DEFAULT_REGISTERED_MODELS).values()),
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
                "TEAM_S3_CREDENTIALS": str(self.credentials_file(user)),
                "TEAM_S3_PROFILE": S3_PROFILE,
            }
            write_private(self.env_file(user), "".join(f"export {key}={value}\n" for key, value in lines.items()))
            keys = secret["s3"][user]
            write_private(self.credentials_file(user), seaweed.s3_credentials(keys["key"], keys["secret"], S3_PROFILE))

    def _configure_dvc_remote(self) -> str | None:
        """The remote `team` of the checkout it runs in, for the first user, in .dvc/config.local (so git sees no
        change; a team commits url and endpoint: docs/team.md): its url and endpoint, and where the user's S3 key
        is (credentialpath, profile); the key itself is in that 0600 file, never on dvc's command line."""
        if not Path(".dvc").is_dir():
            return None
        user = self.users[0]
        settings = {
            "endpointurl": self.s3_uri,
            "credentialpath": str(self.credentials_file(user)),
            "profile": S3_PROFILE,
        }
        local = Path(".dvc/config.local")
        if not local.exists():
            write_private(local, "")  # dvc keeps an existing file's mode
        # add -f replaces the remote's settings (the keys an older team_stack wrote there go too);
        # "--" before each value: a value may begin with "-"
        commands = [["add", "--local", "-f", DVC_REMOTE, "--", f"s3://{DVC_BUCKET}/dvc"]]
        commands += [["modify", "--local", DVC_REMOTE, option, "--", value] for option, value in settings.items()]
        for argv in commands:
            result = subprocess.run([str(servers.BIN / "dvc"), "remote", *argv], capture_output=True, text=True)
            if result.returncode != 0:
                said = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
                raise StackError(f"dvc remote {argv[0]} {DVC_REMOTE} failed: {said[-1] if said else result.returncode}")
        return user

    def _print_where(self, remote_user: str | None) -> None:
        cluster = servers.postgres_cluster(self.folder / "postgres")
        print(f"PostgreSQL  127.0.0.1:{self.ports['postgres']}  databases mlflow, mlflow_auth  ({cluster})")
        print(f"S3          {self.s3_uri}  buckets {DVC_BUCKET} (DVC), {ARTIFACT_BUCKET} (MLflow artifacts)")
        print("            SeaweedFS's other ports take the stack's client certificate only")
        print(f"MLflow      {self.mlflow_uri}  users admin, {', '.join(self.users)}")
        for user in self.users:
            print(f"  {user}: source {self.env_file(user)}  (S3 key: {self.credentials_file(user)})")
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
        for port in self.ports.values():  # weed's gRPC sockets stay behind
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'} (data kept in {self.folder})")

    def status(self) -> bool:
        pg, s3, ml = self.folder / "postgres", self.folder / "s3", self.folder / "mlflow"
        states = {
            f"PostgreSQL 127.0.0.1:{self.ports['postgres']}": servers.postgres_running(pg),
            f"S3 {self.s3_uri}": servers.running_pid(s3 / "weed.pid") is not None,
            f"MLflow {self.mlflow_uri}": servers.running_pid(ml / "mlflow.pid") is not None,
        }
        for name, running in states.items():
            print(f"{name}: {'running' if running else 'stopped'}")
        return all(states.values())
