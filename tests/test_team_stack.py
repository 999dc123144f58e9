"""team_stack without its servers: a taken port fails in one line before anything starts; secret files are
private from their first byte; the DVC remote reads the S3 key from a file; a failed dvc call is one line;
renames are refused on every path MLflow routes them to; the docs' deployed `mlflow server` uses the flags and
settings team_stack runs (the servers themselves: tests/test_team_e2e.py, tests/test_team_deployed.py)."""

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from team_stack import servers
from team_stack.private import write_private
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
        [sys.executable, "-m", "team_stack", "up", "--dir", str(tmp_path / "team"), "--base-port", "65525"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "team_stack: --base-port 65525: choose one between 1025 and 65524"


def test_secret_files_are_their_owners_only_from_the_first_byte(tmp_path):
    previous = os.umask(0)  # whatever the caller's umask: 0600
    try:
        write_private(tmp_path / "new", "s3cret")
        loose = tmp_path / "loose"
        loose.write_text("old")
        loose.chmod(0o644)
        write_private(loose, "s3cret")  # a new file takes its place: never a moment readable by others
    finally:
        os.umask(previous)
    for path in (tmp_path / "new", loose):
        assert path.read_text() == "s3cret" and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose", "new"]  # no partial file left


def test_secrets_env_and_credential_files_are_readable_by_their_owner_only(tmp_path):
    stack = Stack(tmp_path / "team", base_port=30000, users=["alice", "bob"])
    stack.folder.mkdir()
    secrets = stack._secrets()
    assert stack._secrets() == secrets  # generated once
    stack._write_env_files(secrets)
    for user in ("alice", "bob"):
        for path in (stack.secrets_file, stack.env_file(user), stack.credentials_file(user)):
            assert path.stat().st_mode & 0o777 == 0o600
    bob_env = stack.env_file("bob").read_text()
    assert f"MLFLOW_TRACKING_PASSWORD={secrets['users']['bob']}" in bob_env
    assert f"TEAM_S3_CREDENTIALS={stack.credentials_file('bob')}" in bob_env
    assert secrets["s3"]["bob"]["secret"] not in bob_env  # the S3 key is in bob.s3 only
    assert f"aws_secret_access_key = {secrets['s3']['bob']['secret']}" in stack.credentials_file("bob").read_text()
    assert secrets["mlflow_admin"] not in stack.env_file("alice").read_text()
    assert len(secrets["mlflow_admin"]) >= 12  # MLflow refuses shorter admin passwords


def test_an_older_secrets_file_gets_what_it_lacks(tmp_path):
    stack = Stack(tmp_path / "team", base_port=30000, users=["alice", "bob"])
    stack.folder.mkdir()
    older = stack._secrets()
    del older["seaweed_jwt"]
    stack.secrets_file.write_text(json.dumps(older))
    newer = stack._secrets()
    assert {key: newer[key] for key in older} == older and len(newer["seaweed_jwt"]) == 4
    assert json.loads(stack.secrets_file.read_text()) == newer


def test_generated_secrets_need_no_quoting():
    drawn = [token() for _ in range(2000)]  # token_urlsafe began with "-" about once in 64 and broke `dvc remote`
    assert all(re.fullmatch(r"[A-Za-z0-9]{32}", value) for value in drawn)
    assert len(set(drawn)) == len(drawn)


def test_the_dvc_remote_reads_the_key_from_a_credentials_file(tmp_path, monkeypatch):
    """.dvc/config.local names the file and holds no key, none left from an older team_stack either."""
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([str(servers.BIN / "dvc"), "init", "-q"], check=True)
    local = tmp_path / ".dvc" / "config.local"
    local.write_text(
        "['remote \"team\"']\n    url = s3://old\n    access_key_id = old-id\n    secret_access_key = old-key\n"
    )
    stack = Stack(tmp_path / ".team", base_port=30000, users=["alice", "bob"])
    assert stack._configure_dvc_remote() == "alice"
    config = local.read_text()
    assert f"credentialpath = {stack.credentials_file('alice')}" in config and "profile = doveseg-team" in config
    assert f"endpointurl = {stack.s3_uri}" in config and "url = s3://doveseg-dvc/dvc" in config
    assert "old-" not in config and "bob" not in config
    assert "credentialpath" not in (tmp_path / ".dvc" / "config").read_text()


def test_a_failed_dvc_call_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([str(servers.BIN / "dvc"), "init", "-q"], check=True)
    (tmp_path / ".dvc" / "config").write_text("[core\nbroken")
    with pytest.raises(servers.StackError) as failed:
        Stack(tmp_path / ".team", base_port=30000, users=["alice"])._configure_dvc_remote()
    message = str(failed.value)
    assert message.startswith("dvc remote add team failed: ") and "\n" not in message, message
    assert "Traceback" not in message


@pytest.mark.skipif(os.geteuid() != 0, reason="as root: PostgreSQL then runs as the postgres user")
def test_postgres_lives_where_the_postgres_user_can_reach_it():
    """A .team the postgres user can enter keeps the cluster; under a 0700 folder, its home does."""
    home = Path(pwd.getpwnam("postgres").pw_dir)
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        (base / ".team").mkdir(mode=0o711)
        folder = base / ".team" / "postgres"
        assert servers.postgres_cluster(folder) == folder
        base.chmod(0o700)
        assert servers.postgres_cluster(folder).parent == home / "doveseg-team"
    finally:
        shutil.rmtree(base)


def test_renames_are_refused_on_every_path_mlflow_routes_them_to():
    from mlflow.server import app
    from mlflow.server.handlers import _rename_registered_model

    from team_stack.mlflow_auth import RENAME_PATHS

    routed = {
        rule.rule for rule in app.url_map.iter_rules() if app.view_functions[rule.endpoint] is _rename_registered_model
    }
    assert routed == RENAME_PATHS and len(routed) >= 2


def test_the_deployed_server_runs_mlflow_as_team_stack_does(tmp_path, monkeypatch):
    """The same flags (and the proxy's two: the host name and origin it is reached by), the same basic-auth
    settings and authorization function, bound to 127.0.0.1."""
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
    docs = (REPO_ROOT / "docs" / "team.md").read_text()
    deployed = docs[docs.index("## Deployed for a team") : docs.index("The admin then creates")]
    command = re.search(r"^\.venv/bin/mlflow server (.*?)\n(?!  )", deployed.replace("\\\n", ""), re.S | re.M).group(1)
    flags = {flag for flag in command.split() if flag.startswith("--")}
    assert flags == {flag for flag in captured["argv"] if flag.startswith("--")} | {
        "--allowed-hosts",
        "--cors-allowed-origins",
    }
    assert "--host 127.0.0.1" in " ".join(captured["argv"]) and "--host 127.0.0.1" in command
    assert "--app-name basic-auth" in " ".join(captured["argv"]) and "--app-name basic-auth" in command
    ini = (tmp_path / "basic_auth.ini").read_text()
    assert ini.startswith("[mlflow]")
    for line in (
        "default_permission = READ",
        "admin_username = admin",
        f"authorization_function = {servers.AUTHORIZATION_FUNCTION}",
    ):
        assert line in ini and line in deployed
    for variable in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"):
        assert variable in captured["env"] and variable in deployed
