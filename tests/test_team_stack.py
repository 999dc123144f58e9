"""team_stack without its servers: a taken port fails in one line before anything starts; secrets and env files
are private; the README's deployed `mlflow server` uses the flags and settings team_stack runs (the servers
themselves: tests/test_team_e2e.py)."""

import re
import socket
import subprocess
import sys

from team_stack import servers
from team_stack.stack import Stack, token

from conftest import REPO_ROOT


def taken_port(sock: socket.socket) -> int:
    """Listen on a free port that team_stack accepts as a base port (the OS's own picks may lie above it)."""
    for port in range(21000, 40000, 97):
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        sock.listen()
        return port
    raise RuntimeError("no free port found in 21000..40000")


def test_a_taken_port_fails_in_one_line_before_anything_starts(tmp_path):
    with socket.socket() as sock:
        port = taken_port(sock)
        result = subprocess.run(
            [sys.executable, "-m", "team_stack", "up", "--dir", str(tmp_path / "team"), "--base-port", str(port)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"team_stack: port {port} (mlflow) on 127.0.0.1 is taken; free it or choose "
        "other ports: python -m team_stack up --base-port N"
    )
    assert not (tmp_path / "team" / "postgres").exists() and not (tmp_path / "team" / "s3").exists()


def test_a_base_port_out_of_range_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "team_stack", "up", "--dir", str(tmp_path / "team"), "--base-port", "60075"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "team_stack: --base-port 60075: choose one between 1025 and 55524"


def test_secrets_and_env_files_are_readable_by_their_owner_only(tmp_path):
    stack = Stack(tmp_path / "team", base_port=30000, users=["alice", "bob"])
    stack.folder.mkdir()
    secrets = stack._secrets()
    assert stack._secrets() == secrets  # generated once
    stack._write_env_files(secrets)
    for path in (stack.secrets_file, stack.env_file("alice"), stack.env_file("bob")):
        assert path.stat().st_mode & 0o777 == 0o600
    assert f"MLFLOW_TRACKING_PASSWORD={secrets['users']['bob']}" in stack.env_file("bob").read_text()
    assert secrets["mlflow_admin"] not in stack.env_file("alice").read_text()
    assert len(secrets["mlflow_admin"]) >= 12  # MLflow refuses shorter admin passwords


def test_generated_secrets_need_no_quoting():
    drawn = [token() for _ in range(2000)]  # token_urlsafe began with "-" about once in 64 and broke `dvc remote`
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", value) for value in drawn)
    assert len(set(drawn)) == len(drawn)


def test_the_dvc_remote_takes_keys_that_begin_with_a_dash(tmp_path, monkeypatch):
    """A .team/secrets.json from an older team_stack may hold such a key; dvc must not read it as an option."""
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([str(servers.BIN / "dvc"), "init", "-q"], check=True)
    stack = Stack(tmp_path / ".team", base_port=30000, users=["alice", "bob"])
    keys = {"alice": {"key": "-Kalice", "secret": "-rD7MFJpc-Gv_y3T8"}, "bob": {"key": "Kbob", "secret": "bob"}}
    assert stack._configure_dvc_remote({"s3": keys}) == "alice"
    config = (tmp_path / ".dvc" / "config.local").read_text()
    assert "access_key_id = -Kalice" in config and "secret_access_key = -rD7MFJpc-Gv_y3T8" in config
    assert f"endpointurl = {stack.s3_uri}" in config and "url = s3://doveseg-dvc/dvc" in config
    assert "bob" not in config and "-Kalice" not in (tmp_path / ".dvc" / "config").read_text()


def test_readme_deployment_runs_mlflow_as_team_stack_does(tmp_path, monkeypatch):
    captured = {}
    monkeypatch.setattr(servers, "spawn", lambda argv, pid_file, log, env: captured.update(argv=argv, env=env))
    servers.mlflow_start(
        tmp_path,
        5000,
        "postgresql+psycopg2://mlflow@db/mlflow",
        "postgresql+psycopg2://mlflow@db/mlflow_auth",
        "s3://doveseg-mlflow/",
        {},
    )
    readme = (REPO_ROOT / "docs" / "team.md").read_text()
    deployed = readme[readme.index("Deployed for a team") : readme.index("The admin then creates")]
    command = re.search(r"^mlflow server (.*?)\n(?!  )", deployed.replace("\\\n", ""), re.S | re.M).group(1)
    assert {flag for flag in command.split() if flag.startswith("--")} == {
        flag for flag in captured["argv"] if flag.startswith("--")
    }
    assert "--app-name basic-auth" in " ".join(captured["argv"]) and "--app-name basic-auth" in command
    ini = (tmp_path / "basic_auth.ini").read_text()
    for line in (
        "default_permission = READ",
        "admin_username = admin",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
    ):
        assert line in ini and line in deployed
    for variable in ("MLFLOW_AUTH_CONFIG_PATH",):
        assert variable in captured["env"] and variable in deployed
