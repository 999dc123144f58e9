"""The team stack for real (README, "Working as a team"): `make team-up` starts PostgreSQL, SeaweedFS's S3 and
a basic-auth MLflow server; alice runs the README's steps (smoke `dvc repro`, `dvc push -r team`), bob runs
his in a clone of hers (`dvc pull`, `dvc status` clean). Then: what bob may not do, logins, secrets, both
training at once, and three faults (MLflow restarted mid-training, PostgreSQL restarted between runs, the
object store down during `dvc push`). `make team-down` at the end leaves nothing running.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import botocore
import pytest
import requests
from mlflow import MlflowClient

from conftest import REPO_ROOT
from dvc_helpers import copy_repo, dvc, env, git

pytestmark = pytest.mark.slow
sys.path.insert(0, str(REPO_ROOT))
from team_stack import servers  # noqa: E402
from team_stack.stack import ARTIFACT_BUCKET, DVC_BUCKET, PORT_OFFSETS, Stack  # noqa: E402

API = "/api/2.0/mlflow"


def readme_team_blocks() -> list[str]:
    """The bash blocks of docs/team.md's team stack section: alice's, then bob's."""
    text = (REPO_ROOT / "docs" / "team.md").read_text()
    section = text[text.index("## The team stack") : text.index("Deployed for a team")]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def free_base_port() -> int:
    for base in range(21000 + os.getpid() % 500 * 40, 55000, 40):
        ports = [base + offset for offset in PORT_OFFSETS.values()] + [base + PORT_OFFSETS["weed_admin"] + 10000]
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


@pytest.fixture(scope="module")
def team():
    root = Path(tempfile.mkdtemp(prefix="doveseg-team-"))
    root.chmod(0o755)  # the postgres user reaches its cluster under alice/.team
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
    stack = None
    try:
        alice_steps, bob_steps = readme_team_blocks()
        started = time.perf_counter()
        out = bash(alice_steps, alice, {"TEAM_ARGS": f"--base-port {free_base_port()}"})
        print(f"README alice (team-up, smoke dvc repro, push): {time.perf_counter() - started:.0f} s")
        stack = Stack(alice / ".team")
        assert f"MLflow      {stack.mlflow_uri}" in out
        bash(bob_steps.replace("<repo>", str(alice)), root)
        yield {
            "root": root,
            "alice": alice,
            "bob": root / "doveseg-bob",
            "stack": stack,
            "users": {user: read_env(stack.env_file(user)) for user in ("alice", "bob")},
        }
    finally:
        down = subprocess.run(["make", "team-down"], cwd=alice, env=env(), capture_output=True, text=True)
        print(down.stdout, down.stderr)
        if stack is not None:
            for pid_file in (stack.folder / "mlflow" / "mlflow.pid", stack.folder / "s3" / "weed.pid"):
                assert servers.running_pid(pid_file) is None
            assert not servers.postgres_running(stack.folder / "postgres")
            assert not [port for port in stack.ports.values() if _taken(port)], "a port is still served"
        shutil.rmtree(root, ignore_errors=True)


def assert_champion_as_reported(team, repo: Path) -> None:
    """The alias `champion` is on the registered version of the model with the better test mIoU in
    repo's reports/metrics.json (ties: the first), as recorded in that repo's run-id files."""
    scores = json.loads((repo / "reports" / "metrics.json").read_text())
    best = max(scores, key=lambda model: scores[model]["test"]["mIoU"])
    registered = json.loads((repo / "models" / best / "mlflow_run.json").read_text())["registered_model"]
    mlflow = client(team, "bob")
    assert mlflow.get_model_version_by_alias(registered["name"], "champion").version == registered["version"]
    for other in set(scores) - {best}:
        name = json.loads((repo / "models" / other / "mlflow_run.json").read_text())["registered_model"]["name"]
        assert "champion" not in mlflow.get_registered_model(name).aliases


def client(team, user: str, password: str | None = None) -> MlflowClient:
    login = team["users"][user]
    os.environ["MLFLOW_TRACKING_USERNAME"] = user
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password or login["MLFLOW_TRACKING_PASSWORD"]
    return MlflowClient(login["MLFLOW_TRACKING_URI"])


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


def test_what_bob_may_not_do_is_refused(team):
    alice_run = json.loads((team["alice"] / "models" / "paddle" / "mlflow_run.json").read_text())
    bob = login(team, "bob")
    refused = {
        "delete alice's run": call(team, "POST", f"{API}/runs/delete", bob, json={"run_id": alice_run["run_id"]}),
        "delete the team's experiment": call(
            team, "POST", f"{API}/experiments/delete", bob, json={"experiment_id": alice_run["experiment_id"]}
        ),
        "grant himself MANAGE": call(
            team,
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
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
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 403)
    assert call(team, "GET", f"{API}/runs/get", bob, params={"run_id": scratch_run}).status_code == 200
    # S3: bob's key reaches the DVC bucket only
    keys = team["users"]["bob"]
    s3 = boto3.client(
        "s3",
        endpoint_url=keys["TEAM_S3_ENDPOINT"],
        aws_access_key_id=keys["TEAM_S3_KEY_ID"],
        aws_secret_access_key=keys["TEAM_S3_SECRET"],
        region_name="us-east-1",
    )
    assert s3.list_objects_v2(Bucket=DVC_BUCKET)["KeyCount"] > 0
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        s3.list_objects_v2(Bucket=ARTIFACT_BUCKET)


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
    endpoint = team["users"]["bob"]["TEAM_S3_ENDPOINT"]
    for s3 in (
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            config=botocore.config.Config(signature_version=botocore.UNSIGNED),
        ),
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=team["users"]["bob"]["TEAM_S3_KEY_ID"],
            aws_secret_access_key="wrong",
        ),
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


def test_no_password_or_key_in_git_params_or_mlflow(team):
    secrets = json.loads((team["stack"].secrets_file).read_text())
    assert oct(team["stack"].secrets_file.stat().st_mode & 0o777) == "0o600"

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        return [value]

    # every secret (S3 key ids are not secret, but stay out too)
    needles = set(strings(secrets))
    assert len(needles) >= 10
    haystacks = {}
    for who in ("alice", "bob"):
        repo = team[who]
        haystacks[f"{who}: git history"] = git(repo, "log", "-p", "--all")
        haystacks[f"{who}: params.yaml"] = (repo / "params.yaml").read_text()
        haystacks[f"{who}: .dvc/config"] = (repo / ".dvc" / "config").read_text()
        haystacks[f"{who}: git status"] = git(repo, "status", "--porcelain", "--ignored")
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
