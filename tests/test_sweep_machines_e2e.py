"""docs/scale.md's sweep over several machines, run as written against the team stack (smoke profile).

Three clones stand for three machines, with one bare git repository as the team's git remote: alice's clone
(where `python -m team_stack up` runs) trains and pushes the baseline; bob's clone pulls it; both queue their
half of the grid at the same time, run their queues and `dvc exp push`; a third clone `dvc exp pull`s. The DVC
remote lines come from docs/team.md at test time. Then: `dvc exp show` lists both experiments with the test
mIoU MLflow holds for their runs, MLflow lists every run under the team's experiment with its owner, and the
champion is the best version, on doveseg-segmenter only.
"""

import configparser
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO_ROOT
from dvc_helpers import dvc, env, git, smoke_copy
from spark_helpers import docs_blocks, read_manifest, run_bash, stop_marked, write_photo_set
from tiny_pipeline import load_served_model

pytestmark = pytest.mark.slow
GRID = {"machine 1": 0.001, "machine 2": 0.003}


def team_remote_lines() -> str:
    """The `dvc remote` lines of docs/team.md's block for a teammate's clone (bob's), as they are today."""
    text = (REPO_ROOT / "docs" / "team.md").read_text()
    section = text[text.index("## The team stack") : text.index("Deployed for a team")]
    bob = next(block for block in re.findall(r"```bash\n(.*?)```", section, re.S) if "bob.env" in block)
    lines = [line for line in bob.splitlines() if line.startswith("dvc remote")]
    assert lines, bob
    return "\n".join(lines)


def taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def team_up(repo: Path, marker: str) -> None:
    """`python -m team_stack up` in ``repo`` on free ports (it refuses taken ones: then other ports)."""
    for _ in range(5):
        base = random.randrange(30000, 44000, 20)
        if any(taken(port) for port in [*range(base, base + 20), *range(base + 10000, base + 10020)]):
            continue
        done = subprocess.run(
            [sys.executable, "-m", "team_stack", "up", "--base-port", str(base)],
            cwd=repo,
            env={**env(), "PYTHONPATH": str(REPO_ROOT), "DOVESEG_TEST_MARKER": marker},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode == 0:
            return
        if "is taken" not in done.stderr:
            raise AssertionError(f"team_stack up failed:\n{done.stdout}\n{done.stderr}")
    raise AssertionError("no free ports for the team stack")


def machine(script: str, cwd: Path, marker: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={**env(), "DOVESEG_TEST_MARKER": marker, "MLFLOW_TRACKING_URI": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def finish(process: subprocess.Popen, what: str, timeout_s: float = 2400) -> str:
    output, _ = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, f"{what} failed:\n{output[-6000:]}"
    return output


def read_env(path: Path) -> dict:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines())


@pytest.fixture(scope="module")
def sweep():
    root = Path(tempfile.mkdtemp(prefix="doveseg-machines-"))
    root.chmod(0o755)  # the postgres user reaches its cluster under alice/.team
    marker = uuid.uuid4().hex
    alice = smoke_copy(root / "alice")
    origin = root / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    git(alice, "remote", "add", "origin", str(origin))
    baseline, clone, queue, pull = docs_blocks("One sweep over several machines")
    remote_lines = '# the DVC remote `team` with this person\'s S3 key: the `dvc remote` lines of "Working as a team"'
    assert remote_lines in clone
    clone = clone.replace(remote_lines, team_remote_lines())
    team = alice / ".team"
    started = time.perf_counter()
    try:
        team_up(alice, marker)
        finish(machine(baseline, alice, marker), "the baseline block")
        print(f"team stack up and baseline (smoke dvc repro, push): {time.perf_counter() - started:.0f} s")
        bob_clone = clone.replace("<repo-url>", str(origin)).replace("<team>", str(team))
        finish(machine(bob_clone, root, marker), "bob's clone block")
        bob = root / "doveseg-2"
        halves = {
            name: "\n".join(line for line in queue.splitlines() if not re.search(rf"# {other}$", line))
            for name, other in (("machine 1", "machine 2"), ("machine 2", "machine 1"))
        }
        started = time.perf_counter()
        # each in its person's shell, where the earlier block sourced the login
        machines = {
            "machine 1": machine("source .team/alice.env\n" + halves["machine 1"], alice, marker),
            "machine 2": machine(f"source {team}/bob.env\n" + halves["machine 2"], bob, marker),
        }
        outputs = {name: finish(process, name) for name, process in machines.items()}
        print(f"both machines' queues, run at once, pushed: {time.perf_counter() - started:.0f} s")
        third = clone.replace("<repo-url>", str(origin)).replace("<team>", str(team)).replace("doveseg-2", "doveseg-3")
        finish(machine(third + "\n" + pull, root, marker), "the third clone's pull")
        yield {"root": root, "alice": alice, "bob": bob, "third": root / "doveseg-3", "team": team, "outputs": outputs}
    finally:
        for repo in (alice, root / "doveseg-2"):
            if repo.is_dir():
                dvc(repo, "queue", "stop", "--kill", check=False)
        subprocess.run(
            [sys.executable, "-m", "team_stack", "down"],
            cwd=alice,
            env={**env(), "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
        )
        left = stop_marked(marker, timeout_s=60)
        shutil.rmtree(root, ignore_errors=True)
        assert left == [], f"processes left running: {left}"


def shown(repo: Path) -> dict[str, tuple[float, float]]:
    """name -> (paddle's test mIoU in reports/metrics.json, train_paddle.lr), from `dvc exp show --json`."""
    found = {}
    for baseline in json.loads(dvc(repo, "exp", "show", "--json").stdout):
        for experiment in baseline.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                data = revision.get("data") or {}
                metrics = data.get("metrics", {}).get("reports/metrics.json", {}).get("data", {})
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                if revision.get("name") and metrics:
                    found[revision["name"]] = (metrics["paddle"]["test"]["mIoU"], params["train_paddle"]["lr"])
    return found


def mlflow_client(sweep, user: str) -> MlflowClient:
    login = read_env(sweep["team"] / f"{user}.env")
    os.environ["MLFLOW_TRACKING_USERNAME"] = user
    os.environ["MLFLOW_TRACKING_PASSWORD"] = login["MLFLOW_TRACKING_PASSWORD"]
    return MlflowClient(login["MLFLOW_TRACKING_URI"])


@pytest.fixture(autouse=True)
def _no_login_left_behind():
    yield
    os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
    os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


def test_the_third_clone_shows_both_machines_experiments_with_mlflows_test_miou(sweep):
    experiments = shown(sweep["third"])
    assert sorted(lr for _, lr in experiments.values()) == sorted(GRID.values()), experiments
    client = mlflow_client(sweep, "bob")
    name = yaml.safe_load((sweep["alice"] / "params.yaml").read_text())["mlflow"]["experiment"]
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train_paddle'", max_results=100)
    by_name = {run.data.tags.get("dvc_exp_name", ""): run for run in runs}
    owners = {0.001: "alice", 0.003: "bob"}
    for exp_name, (test_miou, lr) in experiments.items():
        run = by_name[exp_name]
        assert run.info.run_name == f"train_paddle · {exp_name}" and run.info.status == "FINISHED"
        assert run.info.user_id == owners[lr]
        assert float(run.data.params["train_paddle.lr"]) == lr
        assert run.data.metrics["test/mIoU"] == pytest.approx(test_miou, abs=1e-9)  # DVC and MLflow agree
    assert by_name[""].info.run_name == "train_paddle"  # the baseline's run, beside them


def test_the_champion_is_the_best_version_and_only_doveseg_segmenter_holds_it(sweep):
    client = mlflow_client(sweep, "bob")
    holders = [
        (model.name, version)
        for model in client.search_registered_models()
        for alias, version in model.aliases.items()
        if alias == "champion"
    ]
    assert len(holders) == 1 and holders[0][0] == "doveseg-segmenter", holders  # REGISTRY.md's one champion
    champion = client.get_model_version("doveseg-segmenter", holders[0][1])
    test_set = client.get_run(champion.run_id).data.tags["test_set"]
    scores = {}
    for version in client.search_model_versions("name = 'doveseg-segmenter'"):
        run = client.get_run(version.run_id)
        if run.data.tags.get("test_set") == test_set and "test/mIoU" in run.data.metrics:
            scores[version.version] = run.data.metrics["test/mIoU"]
    assert len(scores) >= 3  # the baseline's and both machines' experiments competed
    assert scores[champion.version] == max(scores.values())


def test_the_champion_segments_photos_from_the_team_bucket_into_it_on_spark(sweep, tmp_path, monkeypatch):
    pytest.importorskip("pyspark", reason="the spark extra: pip install -e '.[spark]'")
    import boto3
    import pandas as pd

    [block] = [textwrap.dedent(b) for b in docs_blocks("Batch prediction on Spark") if "s3://" in b]
    keys = read_env(sweep["team"] / "bob.env")
    bobs_key = configparser.ConfigParser()  # his S3 key: in the credentials file bob.env names
    bobs_key.read(keys["TEAM_S3_CREDENTIALS"])
    s3 = boto3.client(
        "s3",
        endpoint_url=keys["TEAM_S3_ENDPOINT"],
        aws_access_key_id=bobs_key[keys["TEAM_S3_PROFILE"]]["aws_access_key_id"],
        aws_secret_access_key=bobs_key[keys["TEAM_S3_PROFILE"]]["aws_secret_access_key"],
        region_name="us-east-1",
    )
    bad = write_photo_set(tmp_path / "photos")
    photos = {p.relative_to(tmp_path / "photos").as_posix(): p for p in (tmp_path / "photos").rglob("*") if p.is_file()}
    for key, path in photos.items():
        s3.upload_file(str(path), "doveseg-dvc", f"photos/{key}")
    marker = uuid.uuid4().hex
    try:
        done = run_bash(
            block.replace("<team>", str(sweep["team"])),
            sweep["bob"],
            {**env(), "PYTHONPATH": str(REPO_ROOT), "SPARK_LOCAL_IP": "127.0.0.1", "DOVESEG_TEST_MARKER": marker},
        )
    finally:
        left = stop_marked(marker)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert left == []
    out = tmp_path / "out"
    for key in ("manifest.jsonl", "summary.json"):
        (out / key).parent.mkdir(parents=True, exist_ok=True)
        s3.download_file("doveseg-dvc", f"masks/{key}", str(out / key))
    rows = read_manifest(out)
    assert {photo for photo, row in rows.items() if row["status"] == "failed"} == set(bad)
    champion = mlflow_client(sweep, "bob").get_model_version_by_alias("doveseg-segmenter", "champion")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", keys["MLFLOW_TRACKING_URI"])
    model = load_served_model(f"models:/doveseg-segmenter/{champion.version}")
    ok = [row for row in rows.values() if row["status"] == "ok"]
    assert len(ok) == 16
    answers = model.predict(pd.DataFrame({"image": [photos[row["photo"]].read_bytes() for row in ok]}))["mask"]
    for row, expected in zip(ok, answers):
        assert row["model"] == f"models:/doveseg-segmenter/{champion.version}"
        assert s3.get_object(Bucket="doveseg-dvc", Key=f"masks/{row['mask']}")["Body"].read() == expected
