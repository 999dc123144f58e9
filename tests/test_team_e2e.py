"""The team stack for real (docs/team.md): `make team-up` starts PostgreSQL, SeaweedFS's S3 and a basic-auth
MLflow server; alice runs the page's steps (smoke `dvc repro`, `dvc push -r team`) in a clone under a 0700
folder (as root in CI), bob runs his in a clone of hers (`dvc pull`, `dvc status` clean). Then: what bob may
and may not do, every port without a key, logins, secrets (command lines, files), both training at once, and
three faults (MLflow restarted mid-training, PostgreSQL restarted between runs, the object store down during
`dvc push`). `make team-down` at the end leaves nothing running.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import botocore
import pytest
import requests
import yaml
from mlflow import MlflowClient

from conftest import REPO_ROOT
from dvc_helpers import copy_repo, dvc, env, git

pytestmark = pytest.mark.slow
sys.path.insert(0, str(REPO_ROOT))
from team_stack import doors, servers  # noqa: E402
from team_stack.mlflow_auth import RENAME_PATHS  # noqa: E402
from team_stack.stack import ARTIFACT_BUCKET, DVC_BUCKET, PORT_OFFSETS, Stack  # noqa: E402

API = "/api/2.0/mlflow"


def readme_team_blocks() -> list[str]:
    """The bash blocks of docs/team.md's team stack section: alice's, then bob's."""
    text = (REPO_ROOT / "docs" / "team.md").read_text()
    section = text[text.index("## The team stack") : text.index("### Who may do what")]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def free_base_port() -> int:
    for base in range(21000 + os.getpid() % 500 * 40, 55000, 40):
        ports = [base + offset for offset in PORT_OFFSETS.values()]
        if not any(_taken(port) for port in ports):
            return base
    raise RuntimeError("no free ports")


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def bash(script: str, cwd: Path, extra: dict | None = None, timeout: float = 1200) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={**env(), **(extra or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{script}\nfailed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def read_env(path: Path) -> dict:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines())


class CommandLines:
    """Every distinct command line `ps -ww -eo args` shows (-ww: whole, whatever COLUMNS says), sampled every
    0.1 s while the block runs."""

    def __init__(self):
        self.seen: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            listed = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, errors="replace")
            self.seen.update(listed.stdout.splitlines()[1:])
            self.samples += 1
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def team():
    root = Path(tempfile.mkdtemp(prefix="doveseg-team-"))  # 0700: as root, the postgres user cannot enter it
    alice = copy_repo(root / "alice")
    venv = Path(sys.executable).parent.parent
    (alice / ".venv").symlink_to(venv)  # make's targets find the venv set up, for this pyproject.toml
    installed = (venv / "bin" / ".installed").stat().st_mtime_ns
    os.utime(alice / "pyproject.toml", ns=(installed, installed))
    subprocess.run([sys.executable, "-m", "stages.common.config", "profile=smoke"], cwd=alice, env=env(), check=True)
    git(alice, "rm", "-r", "-q", "--cached", "data/raw")
    dvc(alice, "add", "data/raw")
    git(alice, "add", "-A")
    git(alice, "commit", "-qm", "smoke profile; data/raw under DVC")
    stack = cluster = None
    try:
        alice_steps, bob_steps = readme_team_blocks()
        started = time.perf_counter()
        with CommandLines() as alice_argv:
            out = bash(alice_steps, alice, {"TEAM_ARGS": f"--base-port {free_base_port()}"})
        print(f"docs alice (team-up, smoke dvc repro, push): {time.perf_counter() - started:.0f} s")
        stack = Stack(alice / ".team")
        cluster = servers.postgres_cluster(stack.folder / "postgres")
        assert f"MLflow      {stack.mlflow_uri}" in out and f"({cluster})" in out
        with CommandLines() as bob_argv:
            bash(bob_steps.replace("<repo>", str(alice)), root)
        yield {
            "root": root,
            "alice": alice,
            "bob": root / "doveseg-bob",
            "stack": stack,
            "cluster": cluster,
            "users": {user: read_env(stack.env_file(user)) for user in ("alice", "bob")},
            "secrets": json.loads(stack.secrets_file.read_text()),
            "command lines": {"alice's block (make team-up)": alice_argv, "bob's block": bob_argv},
        }
    finally:
        down = subprocess.run(["make", "team-down"], cwd=alice, env=env(), capture_output=True, text=True)
        print(down.stdout, down.stderr)
        if stack is not None:
            for pid_file in (stack.folder / "mlflow" / "mlflow.pid", stack.folder / "s3" / "weed.pid"):
                assert servers.running_pid(pid_file) is None
            assert not servers.postgres_running(stack.folder / "postgres")
            assert not [port for port in stack.ports.values() if _taken(port)], "a port is still served"
        if cluster is not None and root not in cluster.parents:  # in the postgres user's home
            shutil.rmtree(cluster, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def registered_models(repo: Path) -> dict[str, str]:
    return yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["registered_models"]


def assert_champion_as_reported(team, repo: Path) -> None:
    """One `champion` alias, on the served model, on the version whose training run has the best test/mIoU
    on the contest's test set (the model's tag champion_test_set), and it is the one repo's
    reports/metrics.json names; no other registered model has a `champion`."""
    champion = json.loads((repo / "reports" / "metrics.json").read_text())["champion"]
    names = registered_models(repo)
    served = names["serving"]
    mlflow = client(team, "bob")
    model = mlflow.get_registered_model(served)
    assert champion["registered_model"] == served and str(model.aliases["champion"]) == str(champion["version"])
    contest, scores = model.tags["champion_test_set"], {}
    for version in mlflow.search_model_versions(f"name = '{served}'"):
        run = mlflow.get_run(version.run_id)
        if run.data.tags.get("test_set") == contest and "test/mIoU" in run.data.metrics:
            scores[str(version.version)] = run.data.metrics["test/mIoU"]
    assert scores[str(champion["version"])] == max(scores.values()), (champion, scores)
    for name in set(names.values()) - {served}:
        assert "champion" not in mlflow.get_registered_model(name).aliases, name


def client(team, user: str, password: str | None = None) -> MlflowClient:
    """MLflow as ``user`` (the login goes into the environment, where MLflow reads it on every call)."""
    os.environ["MLFLOW_TRACKING_USERNAME"] = user
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password or team["users"][user]["MLFLOW_TRACKING_PASSWORD"]
    return MlflowClient(team["stack"].mlflow_uri)


def as_user(team, user: str) -> dict:
    login = team["users"][user]
    return {key: login[key] for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}


def call(team, method: str, path: str, auth=None, **kwargs) -> requests.Response:
    return requests.request(method, team["stack"].mlflow_uri + path, auth=auth, timeout=30, **kwargs)


def login(team, user: str) -> tuple[str, str]:
    return user, team["users"][user]["MLFLOW_TRACKING_PASSWORD"]


@pytest.fixture(autouse=True)
def _no_login_left_behind():
    yield
    os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
    os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


def test_bob_pulls_alices_work_and_sees_her_runs_and_models(team):
    assert "Data and pipelines are up to date" in dvc(team["bob"], "status").stdout
    for model in ("paddle", "paddleseg"):
        alice_run = json.loads((team["alice"] / "models" / model / "mlflow_run.json").read_text())
        bob_run = json.loads((team["bob"] / "models" / model / "mlflow_run.json").read_text())
        assert bob_run == alice_run
        assert alice_run["tracking_uri"] == team["stack"].mlflow_uri  # no login in it
        mlflow = client(team, "bob")
        run = mlflow.get_run(alice_run["run_id"])
        assert run.info.status == "FINISHED" and run.info.user_id == "alice"
        assert "test/mIoU" in run.data.metrics
        name, version = alice_run["registered_model"]["name"], alice_run["registered_model"]["version"]
        assert mlflow.get_model_version(name, version).run_id == alice_run["run_id"]
        # the model's files are in the S3 bucket, served to bob through MLflow
        assert mlflow.list_artifacts(alice_run["run_id"])
    assert_champion_as_reported(team, team["bob"])


def test_what_bob_may_do(team):
    """A member trains, registers versions and sets aliases (report's champion needs no more)."""
    served = registered_models(team["alice"])["serving"]
    mlflow = client(team, "bob")
    experiment = mlflow.get_experiment_by_name("doveseg").experiment_id
    run = mlflow.create_run(experiment).info.run_id
    mlflow.log_metric(run, "probe", 1.0)
    mlflow.set_terminated(run)
    source = f"mlflow-artifacts:/{experiment}/{run}/artifacts/model"
    version = mlflow.create_model_version(served, source, run_id=run).version
    mlflow.set_registered_model_alias(served, "bob-tried", version)
    assert mlflow.get_model_version_by_alias(served, "bob-tried").run_id == run
    admin = client(team, "admin", team["secrets"]["mlflow_admin"])  # the admin tidies up: bob cannot
    admin.delete_registered_model_alias(served, "bob-tried")
    admin.delete_model_version(served, version)
    admin.delete_run(run)


def test_what_bob_may_not_do_is_refused(team):
    alice_run = json.loads((team["alice"] / "models" / "paddle" / "mlflow_run.json").read_text())
    registered = alice_run["registered_model"]
    served = registered_models(team["alice"])["serving"]
    bob, api3 = login(team, "bob"), "/api/3.0/mlflow/users/permissions"
    on_served = {"resource_type": "registered_model", "resource_id": served}
    refused = {
        "delete a registered model": call(
            team, "DELETE", f"{API}/registered-models/delete", bob, json={"name": registered["name"]}
        ),
        "delete a model version": call(team, "DELETE", f"{API}/model-versions/delete", bob, json=registered),
        "delete the champion alias": call(
            team, "DELETE", f"{API}/registered-models/alias", bob, json={"name": served, "alias": "champion"}
        ),
        "revoke alice's permission": call(team, "POST", f"{api3}/revoke", bob, json={"username": "alice", **on_served}),
        "grant himself MANAGE": call(
            team, "POST", f"{api3}/grant", bob, json={"username": "bob", "permission": "MANAGE", **on_served}
        ),
        "delete alice's run": call(team, "POST", f"{API}/runs/delete", bob, json={"run_id": alice_run["run_id"]}),
        "delete the team's experiment": call(
            team, "POST", f"{API}/experiments/delete", bob, json={"experiment_id": alice_run["experiment_id"]}
        ),
        "grant himself MANAGE on the experiment": call(
            team,
            "POST",
            f"{api3}/grant",
            bob,
            json={
                "username": "bob",
                "resource_type": "experiment",
                "resource_id": alice_run["experiment_id"],
                "permission": "MANAGE",
            },
        ),
        "create a user": call(team, "POST", f"{API}/users/create", bob, json={"username": "eve", "password": "x" * 16}),
    }
    for path in sorted(RENAME_PATHS):  # every path MLflow serves renames on
        refused[f"rename ({path})"] = call(team, "POST", path, bob, json={"name": served, "new_name": "bobs"})
    # alice's own experiment: bob reads it, may not write to her run there
    mine = client(team, "alice")
    scratch = mine.create_experiment(f"alice-scratch-{time.time_ns()}")
    scratch_run = mine.create_run(scratch).info.run_id
    refused["log to alice's run in her experiment"] = call(
        team,
        "POST",
        f"{API}/runs/log-metric",
        bob,
        json={"run_id": scratch_run, "key": "m", "value": 1, "timestamp": 0, "step": 0},
    )
    refused["create a run in alice's experiment"] = call(
        team, "POST", f"{API}/runs/create", bob, json={"experiment_id": scratch}
    )
    print({what: response.status_code for what, response in refused.items()})
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 403)
    assert call(team, "GET", f"{API}/runs/get", bob, params={"run_id": scratch_run}).status_code == 200
    assert client(team, "bob").get_registered_model(served).name == served  # all still there
    # the admin may rename (and does so back)
    admin = ("admin", team["secrets"]["mlflow_admin"])
    rename = f"{API}/registered-models/rename"
    assert call(team, "POST", rename, admin, json={"name": served, "new_name": f"{served}-x"}).status_code == 200
    assert call(team, "POST", rename, admin, json={"name": f"{served}-x", "new_name": served}).status_code == 200
    # S3: bob's key reaches the DVC bucket only
    s3 = s3_client(team, "bob")
    assert s3.list_objects_v2(Bucket=DVC_BUCKET)["KeyCount"] > 0
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.list_objects_v2(Bucket=ARTIFACT_BUCKET)


def s3_client(team, user: str, secret: str | None = None):
    keys = team["secrets"]["s3"][user]
    return boto3.client(
        "s3",
        endpoint_url=team["stack"].s3_uri,
        aws_access_key_id=keys["key"],
        aws_secret_access_key=secret or keys["secret"],
        region_name="us-east-1",
    )


def test_every_port_refuses_anonymous_reads_and_writes(team):
    stack = team["stack"]
    ports = doors.listening_ports(doors.stack_pids(stack.folder))  # ss -ltnp, for the stack's processes
    names = {port: name for name, port in stack.ports.items()}
    assert ports == set(names), f"ports no probe knows: {ports - set(names)}; not listening: {set(names) - ports}"
    tls = stack.folder / "s3" / "tls"
    ca = (tls / "ca.crt").read_bytes()
    outcomes = {names[port]: doors.try_door(names[port], port, ca) for port in sorted(ports)}
    print(json.dumps(outcomes, indent=1))
    assert not {name: tried for name, tried in outcomes.items() if not doors.all_shut(tried)}
    # the stack's own certificate opens what the probes find shut, so a probe can see an open door
    client_keys = ((tls / "node.key").read_bytes(), (tls / "node.crt").read_bytes())
    read, request = doors.PROBES["weed_master_grpc"]["read"][1:]
    assert doors.grpc_call(stack.ports["weed_master_grpc"], read, request, ca, client_keys) == "OK"


def test_no_request_without_a_valid_login_gets_data(team):
    alice_run = json.loads((team["alice"] / "models" / "paddle" / "mlflow_run.json").read_text())
    artifact = (
        f"/api/2.0/mlflow-artifacts/artifacts/{alice_run['experiment_id']}/{alice_run['run_id']}"
        "/artifacts/config/params.yaml"
    )
    assert call(team, "GET", artifact, login(team, "bob")).status_code == 200
    for auth in (None, ("bob", "wrong-password"), ("mallory", "whatever-password")):
        for method, path, kwargs in (
            ("GET", f"{API}/experiments/search", {"params": {"max_results": 5}}),
            ("GET", f"{API}/runs/get", {"params": {"run_id": alice_run["run_id"]}}),
            ("GET", f"{API}/registered-models/search", {}),
            ("GET", artifact, {}),
            ("GET", "/", {}),
        ):
            response = call(team, method, path, auth, **kwargs)
            assert response.status_code == 401, (auth, path, response.status_code)
            assert alice_run["run_id"] not in response.text
    for s3 in (
        boto3.client(
            "s3",
            endpoint_url=team["stack"].s3_uri,
            region_name="us-east-1",
            config=botocore.config.Config(signature_version=botocore.UNSIGNED),
        ),
        s3_client(team, "bob", secret="wrong"),
    ):
        with pytest.raises(botocore.exceptions.ClientError):
            s3.list_objects_v2(Bucket=DVC_BUCKET)
    # a stage with a wrong password stops before training, with one clear line
    result = subprocess.run(
        [sys.executable, "-m", "stages.train_paddle"],
        cwd=team["bob"],
        capture_output=True,
        text=True,
        env={**env(), **as_user(team, "bob"), "MLFLOW_TRACKING_PASSWORD": "wrong"},
    )
    assert result.returncode != 0
    assert "refused the login of 'bob'" in result.stderr, result.stderr[-2000:]


def secret_strings(team) -> set[str]:
    """Every value of .team/secrets.json (S3 key ids are not secret, but stay out too)."""

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        return [value]

    needles = set(strings(team["secrets"]))
    assert len(needles) >= 14
    return needles


def test_no_secret_on_any_command_line(team):
    """`ps -eo args`, sampled while `make team-up` (alice's block) and bob's block ran: the servers, dvc and the
    block's commands were seen, and no secret in any of them."""
    needles = secret_strings(team)
    alice, bob = (watch.seen for watch in team["command lines"].values())
    print({block: watch.samples for block, watch in team["command lines"].items()})
    assert all(watch.samples >= 20 for watch in team["command lines"].values())
    assert any(" mini " in line for line in alice) and any(
        " server --app-name" in line for line in alice
    )  # weed, mlflow
    assert any("dvc remote" in line for line in bob) and any("dvc pull" in line for line in bob)
    leaks = [
        (block, needle[:4], line[:60])
        for block, watch in team["command lines"].items()
        for line in watch.seen
        for needle in needles
        if needle in line
    ]
    assert not leaks


def test_every_file_that_holds_a_secret_is_private(team):
    """Each file under .team/ holding a secret from secrets.json or a private key is 0600, and so is the
    .dvc/config.local team-up wrote; initdb's password file is gone."""
    needles = [needle.encode() for needle in secret_strings(team)]
    folder = team["stack"].folder
    holding = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            if b"PRIVATE KEY" in content or any(needle in content for needle in needles):
                holding[str(path.relative_to(folder))] = oct(path.stat().st_mode & 0o777)
    print(holding)
    expected = [
        "secrets.json",
        "alice.env",
        "bob.env",
        "alice.s3",
        "bob.s3",
        "s3/s3.json",
        "s3/security.toml",
        "s3/tls/node.key",
    ]
    assert set(expected) <= set(holding)
    assert holding == dict.fromkeys(holding, "0o600")
    assert oct((folder / "mlflow" / "basic_auth.ini").stat().st_mode & 0o777) == "0o600"
    assert oct((team["alice"] / ".dvc" / "config.local").stat().st_mode & 0o777) == "0o600"
    assert not (team["cluster"] / "initdb.pw").exists()


def test_no_password_or_key_in_git_params_or_mlflow(team):
    needles = secret_strings(team)
    haystacks = {}
    for who in ("alice", "bob"):
        repo = team[who]
        haystacks[f"{who}: git history"] = git(repo, "log", "-p", "--all")
        haystacks[f"{who}: params.yaml"] = (repo / "params.yaml").read_text()
        haystacks[f"{who}: .dvc/config"] = (repo / ".dvc" / "config").read_text()
        haystacks[f"{who}: .dvc/config.local"] = (repo / ".dvc" / "config.local").read_text()
        haystacks[f"{who}: git status"] = git(repo, "status", "--porcelain", "--ignored")
    assert "credentialpath" in haystacks["bob: .dvc/config.local"]
    mlflow = client(team, "alice")
    for experiment in mlflow.search_experiments():
        haystacks[f"experiment {experiment.name}"] = json.dumps(experiment.tags)
        for run in mlflow.search_runs([experiment.experiment_id]):
            haystacks[f"run {run.info.run_id}"] = json.dumps([run.data.params, run.data.tags])
    for model in mlflow.search_registered_models():
        haystacks[f"model {model.name}"] = json.dumps(model.tags)
    leaks = [(where, needle[:4]) for where, text in haystacks.items() for needle in needles if needle in text]
    assert not leaks
    assert ".team/" in haystacks["alice: git status"]  # there, and ignored


def test_alice_and_bob_train_at_the_same_time_after_a_postgres_restart(team):
    """Fault: PostgreSQL restarted between two runs. Then both train DoveNet at once: alice retrains, bob
    runs an experiment (train_paddle, export, predict and report: his report moves the champion)."""
    pg = team["stack"].folder / "postgres"
    assert servers.postgres_stop(pg)
    servers.postgres_start(pg, team["stack"].ports["postgres"], "unused: the cluster exists")
    dvc_bin = str(Path(sys.executable).parent / "dvc")
    commands = {
        "alice": [dvc_bin, "repro", "-f", "-s", "train_paddle"],
        "bob": [dvc_bin, "exp", "run", "-n", "bob-lr", "-S", "profile=smoke", "-S", "train_paddle.lr=0.0021"],
    }
    started = time.perf_counter()
    processes = {
        who: subprocess.Popen(
            command,
            cwd=team[who],
            env={**env(), **as_user(team, who)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for who, command in commands.items()
    }
    runs = {}
    for who, process in processes.items():
        out, _ = process.communicate(timeout=900)
        assert process.returncode == 0, out[-4000:]
        runs[who] = json.loads((team[who] / "models" / "paddle" / "mlflow_run.json").read_text())
    print(f"alice's training and bob's experiment at once: {time.perf_counter() - started:.0f} s")
    mlflow = client(team, "alice")
    assert runs["alice"]["run_id"] != runs["bob"]["run_id"]
    versions = {who: run["registered_model"]["version"] for who, run in runs.items()}
    assert versions["alice"] != versions["bob"]
    for who, run in runs.items():
        finished = mlflow.get_run(run["run_id"])
        assert (finished.info.status, finished.info.user_id) == ("FINISHED", who)
        assert mlflow.get_model_version(run["registered_model"]["name"], versions[who]).run_id == run["run_id"]
    assert mlflow.get_run(runs["bob"]["run_id"]).data.tags["dvc_exp_name"] == "bob-lr"
    assert_champion_as_reported(team, team["bob"])


def test_object_store_down_during_push_then_a_rerun_pushes_everything(team):
    stack, bob = team["stack"], team["bob"]
    s3 = stack.folder / "s3"
    assert servers.stop_pid(s3 / "weed.pid")
    try:
        failed = dvc(bob, "push", "-r", "team", check=False, timeout=300)
    finally:
        bash("python -m team_stack up", team["alice"])
    errors = [line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("ERROR")]
    print("dvc push with the object store down:", failed.returncode, errors)
    assert failed.returncode != 0 and len(errors) == 1
    dvc(bob, "push", "-r", "team", timeout=300)
    assert "Cache and remote 'team' are in sync" in dvc(bob, "status", "-c", "-r", "team").stdout


def test_mlflow_restarted_while_a_training_stage_runs(team):
    stack, bob = team["stack"], team["bob"]
    cmd = [sys.executable, "-m", "stages.train_paddle", "train_paddle.epochs=6"]
    before = json.loads((bob / "models" / "paddle" / "mlflow_run.json").read_text())["run_id"]
    process = subprocess.Popen(
        cmd, cwd=bob, env={**env(), **as_user(team, "bob")}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    mlflow = client(team, "bob")
    experiment = mlflow.get_experiment_by_name("doveseg").experiment_id
    deadline = time.monotonic() + 300
    while True:  # restart once the first epoch is logged (and checkpointed)
        running = mlflow.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=1)
        if running and "epoch" in running[0].data.metrics:
            break
        assert process.poll() is None and time.monotonic() < deadline, "no epoch was logged"
        time.sleep(0.5)
    run_id = running[0].info.run_id
    assert servers.stop_pid(stack.folder / "mlflow" / "mlflow.pid")
    restarted = time.perf_counter()
    bash("python -m team_stack up", team["alice"])
    print(f"MLflow down for {time.perf_counter() - restarted:.0f} s")
    out, _ = process.communicate(timeout=900)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    print("training through the restart:", process.returncode, errors)
    if process.returncode != 0:  # one clear error; the rerun resumes from the checkpoint and finishes
        assert len(errors) == 1 and "rerun the stage" in errors[0] and "Traceback" not in out, out[-3000:]
        rerun = subprocess.run(cmd, cwd=bob, env={**env(), **as_user(team, "bob")}, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        print("rerun:", [line for line in rerun.stdout.splitlines() if "checkpoint" in line.lower()][:2])
    run = json.loads((bob / "models" / "paddle" / "mlflow_run.json").read_text())
    assert run["run_id"] == run_id != before  # the same run, resumed: nothing lost
    finished = client(team, "bob").get_run(run["run_id"])
    assert finished.info.status == "FINISHED"
    epochs = {metric.step for metric in client(team, "bob").get_metric_history(run["run_id"], "epoch")}
    assert len(epochs) == 6
