"""The whole DAG for real: `dvc repro` on the smoke profile in a temp copy of the repo, the way a team works.

One repro serves every test here (it is the expensive part): data/raw under DVC, a real MLflow
server on 127.0.0.1 as the tracking store. Then: status, metrics, the DAG, which params rerun what,
a DVC remote round trip into a fresh clone, and a `dvc exp run -S` tagged in MLflow (last: it changes
the workspace).
"""
import json
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from dvc_helpers import copy_repo, dvc, env, git
from mlflow_server import mlflow_server

pytestmark = pytest.mark.slow
TRAINERS = ("train_paddle", "train_paddleseg")
MODELS = ("paddle", "paddleseg")


@pytest.fixture(scope="module")
def team_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    repo = copy_repo(root / "repo")
    subprocess.run([sys.executable, "-m", "stages.common.config", "profile=smoke"], cwd=repo, env=env(), check=True)
    git(repo, "rm", "-r", "-q", "--cached", "data/raw")
    dvc(repo, "add", "data/raw")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "smoke profile; data/raw under DVC")
    with mlflow_server(root / "mlflow") as uri:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo,
                                env={**env(), "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True,
                                timeout=1800)
        assert result.returncode == 0, f"dvc repro failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
        print(f"smoke dvc repro: {time.perf_counter() - started:.1f} s")
        git(repo, "add", "-A")  # dvc.lock and the git-tracked metrics, plots and reports/metrics.json
        git(repo, "commit", "-qm", "dvc repro")
        yield repo, uri


def test_after_repro_status_is_clean_and_metrics_list_both_models(team_repo):
    repo, _ = team_repo
    assert "Data and pipelines are up to date" in dvc(repo, "status").stdout
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    metrics = json.dumps(shown)
    for model in MODELS:
        assert f'"{model}"' in metrics
    report = json.loads((repo / "reports" / "metrics.json").read_text())
    for model in MODELS:
        assert 0 <= report[model]["test"]["mIoU"] <= 1


def test_mlflow_server_holds_both_training_runs_with_the_same_metric_names(team_repo):
    repo, uri = team_repo
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["experiment"])
    runs = {run.data.tags["stage"]: run for run in client.search_runs([experiment.experiment_id])}
    assert set(TRAINERS) <= set(runs)
    names = [set(runs[t].data.metrics) for t in TRAINERS]
    for required in ("train/loss", "val/mIoU", "val/acc", "test/mIoU", "test/acc"):
        assert all(required in n for n in names), (required, names)
    params = [{name for name in runs[t].data.params if not name.startswith("adapted.")} for t in TRAINERS]
    assert params[0] == params[1]  # the same names, but for each trainer's own settings adapted to the data
    for trainer in TRAINERS:
        run = runs[trainer]
        assert run.info.status == "FINISHED"
        assert run.data.tags["git_commit"] == git(repo, "rev-parse", "HEAD~1").strip()  # before the repro commit
        assert len(run.data.tags["data_version"]) == 12
        assert client.get_metric_history(run.info.run_id, "val/mIoU")
        run_id = json.loads((repo / "models" / trainer.removeprefix("train_") / "mlflow_run.json").read_text())
        assert run_id["run_id"] == run.info.run_id
    models = client.search_logged_models([experiment.experiment_id])
    assert {m.source_run_id for m in models} >= {runs[t].info.run_id for t in TRAINERS}


def test_dag_shows_every_stage(team_repo):
    repo, _ = team_repo
    edges = {tuple(line.split()) for line in dvc(repo, "dag", "--dot").stdout.replace('"', "").replace(";", "")
             .splitlines() if "->" in line}
    edges = {(edge[0], edge[2]) for edge in edges}
    assert {("convert_json", "build_splits"), ("build_splits", "train_paddle"), ("build_splits", "train_paddleseg"),
            ("train_paddle", "predict"), ("train_paddleseg", "predict"), ("predict", "report")} <= edges


def changed_stages(repo, edit) -> set[str]:
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    edit(params)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(dvc(repo, "status", "--json").stdout)
    finally:
        params_file.write_text(original)
    return set(status)


def test_a_param_edit_reruns_only_the_stages_it_touches(team_repo):
    repo, _ = team_repo
    assert changed_stages(repo, lambda p: p["report"].update(worst_samples=p["report"]["worst_samples"] + 1)) == {"report"}
    assert changed_stages(repo, lambda p: p["predict"].update(batch_size=p["predict"]["batch_size"] + 1)) == {"predict"}
    assert "train_paddle" not in changed_stages(repo, lambda p: p["train_paddleseg"].update(lr=0.123))
    assert "train_paddleseg" not in changed_stages(repo, lambda p: p["train_paddle"].update(lr=0.123))
    assert "train_paddle" not in changed_stages(repo, lambda p: p["predict"].update(batch_size=3))


def test_a_predict_param_edit_reruns_predict_and_report_not_the_trainers(team_repo):
    repo, uri = team_repo
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["predict"]["overlay_alpha"] = 0.55
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        ran = dvc(repo, "repro", extra_env={"MLFLOW_TRACKING_URI": uri}).stdout
    finally:
        params_file.write_text(original)
    assert "Running stage 'predict'" in ran and "Running stage 'report'" in ran
    assert "Running stage 'train_paddle" not in ran and "Running stage 'convert_json'" not in ran
    restored = dvc(repo, "repro", extra_env={"MLFLOW_TRACKING_URI": uri}).stdout  # back to the committed params: from DVC's run cache
    assert "Running stage 'train_paddle" not in restored
    assert "Data and pipelines are up to date" in dvc(repo, "status").stdout


def test_noop_repro_reruns_nothing(team_repo):
    repo, _ = team_repo
    started = time.perf_counter()
    result = dvc(repo, "repro")
    print(f"no-op dvc repro: {time.perf_counter() - started:.2f} s")
    assert "Running stage" not in result.stdout


def test_remote_round_trip_restores_everything_without_retraining(team_repo, tmp_path):
    repo, _ = team_repo
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "-d", "team", str(remote))
    git(repo, "add", ".dvc/config")
    git(repo, "commit", "-qm", "team remote")
    dvc(repo, "push", "--run-cache")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    dvc(clone, "pull", "--run-cache")
    assert "Data and pipelines are up to date" in dvc(clone, "status").stdout
    result = dvc(clone, "repro")
    assert "Running stage" not in result.stdout, result.stdout
    for path in ("data/raw", "models/paddle/inference.pdiparams", "models/paddleseg/inference.pdiparams",
                 "predictions", "reports/index.html", "reports/metrics.json"):
        assert (clone / path).exists(), path


def test_exp_run_composes_params_and_tags_the_mlflow_run(team_repo):
    repo, uri = team_repo
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-n", "lr-sweep-1",
                             "-S", "profile=smoke", "-S", "train_paddle.lr=0.0021"],
                            cwd=repo, env={**env(), "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["train_paddle"]["lr"] == 0.0021 and params["profile"] == "smoke"
    assert "Running stage 'train_paddle'" in result.stdout
    assert "Running stage 'train_paddleseg'" not in result.stdout
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.dvc_exp_name = 'lr-sweep-1'")
    assert [r.data.tags["stage"] for r in runs] == ["train_paddle"]
    assert runs[0].data.params["train_paddle.lr"] == "0.0021"
    shown = dvc(repo, "exp", "show", "--json").stdout
    assert "lr-sweep-1" in shown
