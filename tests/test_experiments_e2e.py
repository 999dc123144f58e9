"""docs/experiments.md's queued sweep for real: `dvc exp run --queue` + `dvc queue start -j 2` on the default SQLite store.

One smoke `dvc repro` in a temp copy (tracking to the project's sqlite:///mlflow.db, as a user's first
`make demo` does), then the page's commands as written, read from it: a grid over train_paddle.lr in DVC's
Hydra syntax and one named experiment, queued, run two at a time in DVC's temp copies (.dvc/tmp/exps/...).
Every experiment must land in the project's one store, named and tagged, agree with `dvc exp show`, register
its own model version, and leave the champion on the best one. The queue's workers are stopped at the end.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from mlflow_ui import need_chromium, render

from docs_pages import block
from dvc_helpers import dvc, env, git, smoke_copy

pytestmark = pytest.mark.slow

# docs/experiments.md's queued sweep: the fixture runs its block, read from the page, line by line as written.
README_LINES = [
    "dvc exp run --queue -S 'train_paddle.lr=0.001,0.003'",
    "dvc exp run --queue -n q-ep -S train_paddle.epochs=3",
    "dvc queue start -j 2",
    "dvc queue status",
    "dvc exp show --only-changed",
]
EXPERIMENTS = 3


def no_tracking_override() -> dict:
    """The default store (params' sqlite:///mlflow.db), whatever the calling shell exports."""
    return {"MLFLOW_TRACKING_URI": ""}


def queue_workers(repo: Path) -> list[int]:
    """Processes running in the repo (DVC's celery queue workers and what they run), this test's only."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == str(repo) or cwd.startswith(f"{repo}/"):
                pids.append(int(entry.name))
    return pids


def shell(repo: Path, line: str) -> subprocess.CompletedProcess:
    """One line of a docs block, as written, in the repo (the default store, whatever the caller exports)."""
    done = subprocess.run(
        ["bash", "-c", line],
        cwd=repo,
        env={**env(), **no_tracking_override()},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, f"{line}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def docs_lines(marker: str) -> list[str]:
    return [line.split(" #")[0].strip() for line in block("docs/experiments.md", marker).splitlines() if line.strip()]


def wait_for_queue(repo: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        time.sleep(5)
    raise AssertionError(f"the queue did not finish in {timeout_s} s:\n{status}")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    repo = smoke_copy(tmp_path_factory.mktemp("sweep") / "repo")
    started = time.perf_counter()
    dvc(repo, "repro", extra_env=no_tracking_override())
    print(f"smoke dvc repro: {time.perf_counter() - started:.1f} s")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "dvc repro")
    lines = docs_lines("dvc queue start -j 2")
    assert lines == README_LINES  # what the assertions below expect: change both together
    try:
        for line in lines:
            if line == "dvc queue start -j 2":
                started = time.perf_counter()
            if line == "dvc queue status":  # "until none is Queued or Running"
                status = wait_for_queue(repo, 1800)
                print(f"queued sweep of {EXPERIMENTS} smoke experiments, -j 2: {time.perf_counter() - started:.1f} s")
            else:
                shown = shell(repo, line).stdout
        assert "q-ep" in shown, shown  # dvc exp show --only-changed lists the experiments
        yield repo, status
    finally:
        dvc(repo, "queue", "stop", "--kill", check=False)
        deadline = time.monotonic() + 30
        while queue_workers(repo) and time.monotonic() < deadline:
            time.sleep(1)
        for pid in queue_workers(repo):  # left over after `dvc queue stop`: ours, by id
            os.kill(pid, signal.SIGKILL)


def store_runs(repo: Path) -> tuple[MlflowClient, dict]:
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(
        yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["experiment"]
    )
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return client, {
        run.data.tags.get("dvc_exp_name", ""): run for run in runs if run.data.tags.get("stage") == "train_paddle"
    }


def shown_experiments(repo: Path) -> dict:
    """name -> (test mIoU of paddle in reports/metrics.json, train_paddle.lr) from `dvc exp show --json`."""
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                data = revision.get("data") or {}
                metrics = data.get("metrics", {}).get("reports/metrics.json", {}).get("data", {})
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                if revision.get("name") and metrics:
                    found[revision["name"]] = (
                        metrics["paddle"]["test"]["mIoU"],
                        params["train_paddle"]["lr"],
                        params["train_paddle"]["epochs"],
                    )
    return found


def test_every_queued_experiment_succeeds_and_none_leaves_a_store_in_its_temp_copy(swept):
    repo, status = swept
    assert status.count("Success") == EXPERIMENTS and "Failed" not in status, status
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))  # no throwaway store in DVC's temp copies


def test_the_project_store_holds_each_experiments_run_named_and_tagged_as_dvc_shows_it(swept):
    repo, _ = swept
    client, runs = store_runs(repo)
    shown = shown_experiments(repo)
    assert len(shown) == EXPERIMENTS and "q-ep" in shown, shown
    default_lr = yaml.safe_load((repo / "params.yaml").read_text())["train_paddle"]["lr"]
    assert sorted(lr for _, lr, _ in shown.values()) == sorted([0.001, 0.003, default_lr])
    baseline = git(repo, "rev-parse", "HEAD").strip()
    for name, (test_miou, lr, epochs) in shown.items():
        run = runs[name]
        assert run.info.run_name == f"train_paddle · {name}"
        assert run.info.status == "FINISHED"
        assert run.data.tags["dvc_exp_baseline_rev"] == baseline
        assert float(run.data.params["train_paddle.lr"]) == lr and int(run.data.params["train_paddle.epochs"]) == epochs
        assert run.data.metrics["test/mIoU"] == pytest.approx(test_miou, abs=1e-9)  # DVC and MLflow agree
        assert len(client.get_metric_history(run.info.run_id, "val/mIoU")) == epochs  # every epoch arrived
    assert runs[""].info.run_name == "train_paddle"  # the workspace's repro, as before


def one_champion(client) -> tuple[str, str]:
    """(registered model, version) of the one `champion` alias in the whole registry."""
    holders = [
        (m.name, str(m.aliases["champion"])) for m in client.search_registered_models() if "champion" in m.aliases
    ]
    assert len(holders) == 1, holders
    return holders[0]


def best_served(client, serving: str) -> set[str]:
    """The served versions with the best test/mIoU on the contest's test set (the served model's tag)."""
    contest = client.get_registered_model(serving).tags["champion_test_set"]
    scored = {}
    for version in client.search_model_versions(f"name = '{serving}'"):
        run = client.get_run(version.run_id)
        if run.data.tags.get("test_set") == contest and "test/mIoU" in run.data.metrics:
            scored[str(version.version)] = run.data.metrics["test/mIoU"]
    return {version for version, score in scored.items() if score == max(scored.values())}


def test_each_experiment_registers_its_own_version_and_the_champion_is_the_best(swept):
    repo, _ = swept
    client, runs = store_runs(repo)
    registered = yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["registered_models"]
    versions = client.search_model_versions(f"name = '{registered['paddle']}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, EXPERIMENTS + 2))  # + the workspace's
    assert {v.run_id for v in versions} == {run.info.run_id for run in runs.values()}
    # one champion in the whole registry: the served model's best version, whichever trainer made it
    name, version = one_champion(client)
    assert name == registered["serving"] and version in best_served(client, name)


def test_the_queue_leaves_no_worker_behind(swept):
    repo, _ = swept
    dvc(repo, "queue", "stop")
    deadline = time.monotonic() + 30
    while queue_workers(repo) and time.monotonic() < deadline:
        time.sleep(1)
    assert queue_workers(repo) == []


def test_mlflow_ui_lists_the_experiments_runs_beside_the_workspaces(swept, tmp_path):
    need_chromium()
    repo, _ = swept
    from mlflow_server import mlflow_server

    with mlflow_server(tmp_path / "ui", backend=f"sqlite:///{repo / 'mlflow.db'}") as uri:
        from stages.common.config import load_params
        from stages.tracking.runs import experiment_page

        text = render(experiment_page(load_params([f"mlflow.tracking_uri={uri}"], repo), uri), tmp_path / "sweep.png")
    print(f"screenshot: {tmp_path / 'sweep.png'}")
    names = [line for line in text if line.startswith("train_paddle")]
    assert "train_paddle" in names and "train_paddle · q-ep" in names, text[:80]
    assert len([name for name in names if " · " in name]) == EXPERIMENTS


def test_a_named_workspace_experiment_and_metrics_diff_as_the_docs_show_them(swept):
    """docs/experiments.md's first experiment block, as written (after the sweep, so the queue's tests saw the
    baseline)."""
    lines = docs_lines("dvc exp run -n lr-2e-3")
    assert lines == ["dvc exp run -n lr-2e-3 -S train_paddle.lr=0.002", "dvc metrics diff"]
    repo, _ = swept
    ran = shell(repo, lines[0])
    stages_run = re.findall(r"Running stage '([^']+)'", ran.stdout + ran.stderr)
    assert "train_paddle" in stages_run and "train_paddleseg" not in stages_run, stages_run  # what lr touches
    _, runs = store_runs(repo)
    assert runs["lr-2e-3"].info.run_name == "train_paddle · lr-2e-3"
    assert float(runs["lr-2e-3"].data.params["train_paddle.lr"]) == 0.002
    diff = shell(repo, lines[1]).stdout
    assert "metrics/train_paddle.json" in diff, diff  # the workspace's new training against HEAD


def test_experiments_scoring_one_model_or_other_splits_cannot_move_the_champion(swept):
    """Two experiments the champion rule forbids to crown: one scoring only the PaddleSeg model (today's code
    crowned among the scored models only: two champions, the worse one served) and one on other splits (today
    it took the champion whatever its score). `--temp`: each runs in DVC's copy, the workspace stays."""
    repo, _ = swept
    client, _ = store_runs(repo)
    serving = yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["registered_models"]["serving"]
    before = one_champion(client)
    dvc(
        repo,
        "exp",
        "run",
        "--temp",
        "-n",
        "seg-only",
        "-S",
        "predict.models=[paddleseg]",
        extra_env=no_tracking_override(),
    )
    assert one_champion(client) == before and before[1] in best_served(client, serving)
    started = time.perf_counter()
    ran = dvc(
        repo, "exp", "run", "--temp", "-n", "seed-7", "-S", "build_splits.seed=7", extra_env=no_tracking_override()
    )
    print(f"seed-7 experiment: {time.perf_counter() - started:.0f} s")
    assert "recorded, the champion does not move" in ran.stdout + ran.stderr
    assert one_champion(client) == before
    seed_runs = client.search_runs(
        [client.get_experiment_by_name("doveseg").experiment_id], "tags.dvc_exp_name = 'seed-7'"
    )
    contest = client.get_registered_model(serving).tags["champion_test_set"]
    assert seed_runs and all(run.data.tags["test_set"] != contest for run in seed_runs)
