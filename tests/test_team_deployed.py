"""docs/team.md's "Deployed for a team", run as written on loopback, only hosts, ports and paths changed: the
PostgreSQL role and databases (on a throwaway cluster), the MLflow server bound to 127.0.0.1, nginx in front
of it with a self-signed certificate, and the DVC remote. A login over HTTPS works and a wrong one gets 401;
MLflow's own port cannot be reached from this host's other addresses, nginx's can.
"""

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import REPO_ROOT
from dvc_helpers import env, git

pytestmark = pytest.mark.slow
sys.path.insert(0, str(REPO_ROOT))
from team_stack import servers  # noqa: E402
from team_stack.private import write_private  # noqa: E402

NGINX = "/usr/sbin/nginx"


def deployed_blocks() -> list[str]:
    text = (REPO_ROOT / "docs" / "team.md").read_text()
    section = text[text.index("## Deployed for a team") : text.index("## What the tests prove")]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def substitute(block: str, changes: dict[str, str]) -> str:
    for old, new in changes.items():
        assert old in block, f"{old!r} is no longer in the block"
        block = block.replace(old, new)
    return block


def run(block: str, cwd: Path, extra: dict, stdin: str = "") -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        env={**env(), **extra},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # no terminal: createuser reads the password from stdin
    )
    assert result.returncode == 0, f"{block}\nfailed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def other_addresses() -> list[str]:
    """This host's IPv4 addresses outside loopback; a dummy interface's when it has none."""
    listed = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True)
    found = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", listed.stdout)
    if not found:
        subprocess.run(["ip", "link", "add", "doveseg-test0", "type", "dummy"], check=True)
        subprocess.run(["ip", "addr", "add", "198.51.100.7/32", "dev", "doveseg-test0"], check=True)
        subprocess.run(["ip", "link", "set", "doveseg-test0", "up"], check=True)
        found = ["198.51.100.7"]
    return found


def connects(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex((host, port)) == 0


def wait_for(url: str, timeout_s: float, **kwargs) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url, timeout=5, **kwargs).status_code == 200:
                return
        except requests.exceptions.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout_s} s"
        time.sleep(0.5)


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (apt-get install -y nginx)")
def test_the_deployed_blocks_serve_mlflow_over_https_only(tmp_path):
    postgres_block, server_block, nginx_block, dvc_block = deployed_blocks()
    pg_port, mlflow_port, https_port = free_port(), free_port(), free_port()
    superuser, role, admin = (secrets.token_hex(16) for _ in range(3))
    cluster = tmp_path / "postgres"
    servers.postgres_start(cluster, pg_port, superuser)
    server = None
    nginx_conf = tmp_path / "nginx" / "nginx.conf"
    started = time.perf_counter()
    try:
        # PostgreSQL: the role and databases, as its superuser; createuser asks the role's password twice
        login = {"PGHOST": "127.0.0.1", "PGPORT": str(pg_port), "PGUSER": "postgres", "PGPASSWORD": superuser}
        run(postgres_block, tmp_path, {**login, "PATH": f"{servers.PG_BIN}:{os.environ['PATH']}"}, f"{role}\n{role}\n")

        # MLflow, its secrets in a 0600 file
        etc = tmp_path / "etc-mlflow"
        etc.mkdir()
        secrets_env = {
            "PGPASSWORD": role,
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "AWS_ACCESS_KEY_ID": "unused",
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
        }
        write_private(etc / "secrets.env", "".join(f"{key}={value}\n" for key, value in secrets_env.items()))
        hosts = {
            "/etc/mlflow": str(etc),
            "db.internal": f"127.0.0.1:{pg_port}",
            "https://s3.internal": "http://127.0.0.1:9",  # nothing here: a login never reaches S3
            "--port 5000": f"--port {mlflow_port}",
            "https://mlflow.internal": f"https://localhost:{https_port}",
            "mlflow.internal": "localhost",
        }
        server = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", substitute(server_block, hosts)],
            cwd=REPO_ROOT,  # its .venv
            env={**env(), "PYTHONPATH": str(REPO_ROOT)},  # this checkout's team_stack, whatever the venv's install
            stdout=open(tmp_path / "mlflow.log", "wb"),  # noqa: SIM115 (the server outlives this block)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        print(f"PostgreSQL and its block: {time.perf_counter() - started:.0f} s")
        wait_for(f"http://127.0.0.1:{mlflow_port}/health", 180)
        print(f"the MLflow server's block, up: {time.perf_counter() - started:.0f} s")

        # nginx: a running master (as Debian's service is) whose http block includes the conf.d folder
        ssl, conf_d = tmp_path / "ssl", tmp_path / "nginx" / "conf.d"
        ssl.mkdir()
        conf_d.mkdir(parents=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
            + ["-keyout", str(ssl / "key.pem"), "-out", str(ssl / "cert.pem"), "-days", "1", "-subj", "/CN=localhost"]
            + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True,
            capture_output=True,
        )
        nginx_conf.write_text(
            f"pid {tmp_path}/nginx/nginx.pid;\nerror_log {tmp_path}/nginx/error.log;\nevents {{}}\n"
            f"http {{\n    access_log off;\n    include {conf_d}/*.conf;\n}}\n"
        )
        subprocess.run([NGINX, "-c", str(nginx_conf)], check=True)
        proxy = {
            "/etc/nginx/conf.d": str(conf_d),
            "/etc/ssl/mlflow": str(ssl),
            "listen 443": f"listen {https_port}",
            "127.0.0.1:5000": f"127.0.0.1:{mlflow_port}",
            "mlflow.internal": "localhost",
            "nginx -t": f"{NGINX} -c {nginx_conf} -t",
            "nginx -s reload": f"{NGINX} -c {nginx_conf} -s reload",
        }
        run(substitute(nginx_block, proxy), tmp_path, {})
        https = f"https://localhost:{https_port}"
        wait_for(f"{https}/health", 30, verify=str(ssl / "cert.pem"))

        search = f"{https}/api/2.0/mlflow/experiments/search?max_results=5"
        signed_in = requests.get(search, auth=("admin", admin), verify=str(ssl / "cert.pem"), timeout=30)
        assert signed_in.status_code == 200 and "experiments" in signed_in.json()
        wrong = requests.get(search, auth=("admin", "wrong-password"), verify=str(ssl / "cert.pem"), timeout=30)
        assert wrong.status_code == 401
        assert connects("127.0.0.1", mlflow_port)
        for address in other_addresses():
            assert connects(address, https_port), address  # the address is live: nginx answers there
            assert not connects(address, mlflow_port), f"MLflow's own port answers on {address}"

        print(f"nginx's block, logins checked: {time.perf_counter() - started:.0f} s")
        # the DVC remote: url and endpoint in git, each person's key file in .dvc/config.local
        repo = tmp_path / "repo"
        repo.mkdir()
        git(repo, "init", "-q")
        subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=repo, check=True)
        key_file = tmp_path / "s3-credentials"
        dvc_changes = {"https://s3.internal": "http://127.0.0.1:9", "~/.config/doveseg/s3-credentials": str(key_file)}
        run(substitute(dvc_block, dvc_changes), repo, {})
        assert "endpointurl = http://127.0.0.1:9" in (repo / ".dvc" / "config").read_text()
        local = (repo / ".dvc" / "config.local").read_text()
        assert f"credentialpath = {key_file}" in local and "profile = doveseg-team" in local
        print(f"the DVC remote's block: {time.perf_counter() - started:.0f} s")
    finally:
        if nginx_conf.exists() and (tmp_path / "nginx" / "nginx.pid").exists():
            subprocess.run([NGINX, "-c", str(nginx_conf), "-s", "stop"], check=False)
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
        servers.postgres_stop(cluster)
        where = servers.postgres_cluster(cluster)
        if tmp_path not in where.parents:
            subprocess.run(["rm", "-rf", str(where)], check=False)
