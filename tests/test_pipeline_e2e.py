"""The whole DAG for real: `dvc repro` on the smoke profile in a temp copy of the repo, the way a team works.

One repro serves every test here (it is the expensive part): data/raw under DVC, a real MLflow
server on 127.0.0.1 as the tracking store. Then: status, metrics, the DAG, which params rerun what,
a DVC remote round trip into a fresh clone, the champion served by `mlflow models serve`, and a `dvc exp run -S`
tagged in MLflow (last: it changes the workspace).
"""

import io
import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from mlflow_ui import need_chromium, render
from PIL import Image

from demo_data.doves import write_dataset

from docs_pages import block, labelme_stand_in, stand_in_venv
from dvc_helpers import dvc, env, git, smoke_copy
from mlflow_server import free_port, mlflow_server
from model_server import masks, model_server, photos_request, post, serve_command, serving_env

pytestmark = pytest.mark.slow
TRAINERS = ("train_paddle", "train_paddleseg")
MODELS = ("paddle", "paddleseg")
REPRO = {}  # the smoke repro's output


@pytest.fixture(scope="module")
def team_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    repo = smoke_copy(root / "repo")
    git(repo, "rm", "-r", "-q", "--cached", "data/raw")
    dvc(repo, "add", "data/raw")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "data/raw under DVC")
    with mlflow_server(root / "mlflow") as uri:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "dvc", "repro"],
            cwd=repo,
            env={**env(), "MLFLOW_TRACKING_URI": uri},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert result.returncode == 0, f"dvc repro failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
        print(f"smoke dvc repro: {time.perf_counter() - started:.1f} s")
        REPRO["stdout"] = result.stdout
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


def test_dvc_repro_ends_with_the_summary(team_repo):
    """The last thing `dvc repro` prints (report's last lines): each model's test mIoU, the champion and its
    served model, where the report is, and what to run next."""
    repo, _ = team_repo
    report = json.loads((repo / "reports" / "metrics.json").read_text())
    lines = REPRO["stdout"].rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line == "doveseg: test mIoU on the test split")
    tail, after = lines[start : start + 9], lines[start + 9 :]
    text = "\n".join(tail)
    # after report's summary only DVC's own closing lines, which no stage can print after
    assert all(line.startswith(("Updating lock file", "Use `dvc push`")) or not line for line in after), after
    for model in MODELS:
        assert f"{report[model]['test']['mIoU']:.3f}" in text
    champion = report["champion"]
    assert f"champion: {champion['model']} ({champion['architecture']})" in text
    assert f"served model models:/doveseg-segmenter@champion = version {champion['version']}" in text
    assert "report: reports/index.html" in text and "make mlflow-ui" in text
    assert tail[-1].endswith('mlflow models serve -m "models:/doveseg-segmenter@champion" --env-manager local -p 5001')


def test_mlflow_server_holds_both_training_runs_with_the_same_metric_names(team_repo):
    repo, uri = team_repo
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(
        yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["experiment"]
    )
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


def lock_md5(repo, stage: str) -> str:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]["outs"][0]["md5"]


def training_runs(repo, uri) -> dict:
    client = MlflowClient(uri)
    name = yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["experiment"]
    experiment_id = client.get_experiment_by_name(name).experiment_id
    return {run.data.tags["stage"]: run for run in client.search_runs([experiment_id])}


def test_mlflow_runs_have_dvc_datasets_registered_models_a_champion_and_true_durations(team_repo, monkeypatch):
    repo, uri = team_repo
    client = MlflowClient(uri)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = training_runs(repo, uri)
    for trainer in TRAINERS:
        run = runs[trainer]
        # the data it trained on: dvc.lock's md5 of data/processed (as convert_json recorded it)
        [data] = run.inputs.dataset_inputs
        assert data.dataset.name == "data/processed"
        assert data.dataset.digest + ".dir" == lock_md5(repo, "convert_json")
        assert json.loads(data.dataset.profile)["splits_md5"] == lock_md5(repo, "build_splits")
        # its duration is the training's: predict and report added to it after it ended
        test_logged = client.get_metric_history(run.info.run_id, "test/mIoU")[0].timestamp
        assert run.info.end_time < test_logged
    # one registered version per training run, labelled with its architecture; no champion alias on either
    report = json.loads((repo / "reports" / "metrics.json").read_text())
    champion = max(MODELS, key=lambda model: report[model]["test"]["mIoU"])
    assert report["champion"]["model"] == champion
    for model in MODELS:
        name = params["mlflow"]["registered_models"][model]
        [version] = client.search_model_versions(f"name = '{name}'")
        assert version.run_id == runs[f"train_{model}"].info.run_id
        assert version.tags["architecture"] == ("DoveNet" if model == "paddle" else "UNet")
        assert client.get_registered_model(name).aliases == {}
        if model == champion:
            assert report["champion"]["training_model"] == f"{name}/{version.version}"

    # the champion's training version loads from the server and predicts like the exported model in models/
    import mlflow.paddle
    import numpy as np
    import paddle

    from stages.models.inference_model import Predictor

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = mlflow.paddle.load_model(f"models:/{report['champion']['training_model']}")
    height, width = json.loads((repo / "models" / champion / "meta.json").read_text())["input_size"]
    batch = np.random.default_rng(0).uniform(-1, 1, (2, 3, height, width)).astype("float32")
    scores = loaded(paddle.to_tensor(batch)).numpy()
    expected = Predictor(repo / "models" / champion, use_gpu=False, cpu_threads=1).logits(batch)
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_the_champion_is_served_by_mlflow_models_serve_with_predicts_masks(team_repo, tmp_path):
    """README's serve command on the smoke-trained champion, through the team's MLflow server: two test photos
    in one request, their masks against predict's."""
    repo, uri = team_repo
    serving = yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["registered_models"]["serving"]
    report = json.loads((repo / "reports" / "metrics.json").read_text())
    champion = report["champion"]["model"]
    assert champion == max(MODELS, key=lambda model: report[model]["test"]["mIoU"])
    client, runs = MlflowClient(uri), training_runs(repo, uri)
    # a version per export, each from its model's training run; the alias on the champion's
    versions = client.search_model_versions(f"name = '{serving}'")
    assert sorted(v.run_id for v in versions) == sorted(runs[f"train_{model}"].info.run_id for model in MODELS)
    served = client.get_model_version_by_alias(serving, "champion")
    assert served.run_id == runs[f"train_{champion}"].info.run_id
    assert report[champion]["serving_model_uri"] == f"models:/{serving}/{served.version}"
    assert report["champion"]["version_uri"] == report[champion]["serving_model_uri"]

    stems_and_images = [
        line.split()[0] for line in (repo / "data" / "splits" / "test.txt").read_text().splitlines()[:2]
    ]
    photos = [repo / "data" / "processed" / image for image in stems_and_images]
    port = free_port()
    with model_server(
        serve_command(f"models:/{serving}@champion", port), port, repo, serving_env(uri), tmp_path / "serve.log"
    ) as url:
        status, answer = post(url, photos_request([photo.read_bytes() for photo in photos]))
    assert status == 200, answer
    for photo, mask in zip(photos, masks(answer)):
        expected = np.asarray(Image.open(repo / "predictions" / champion / "class_id" / f"{photo.parent.name}.png"))
        got = np.asarray(Image.open(io.BytesIO(mask)))
        assert got.shape == expected.shape and (got == expected).mean() >= 0.999


def test_both_trainers_write_the_same_metric_keys(team_repo):
    repo, _ = team_repo
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    keys = {trainer: set(files[f"metrics/{trainer}.json"]["data"]) for trainer in TRAINERS}
    assert keys["train_paddle"] == keys["train_paddleseg"] and "best_val_IoU" in keys["train_paddle"]
    headers = {(repo / "plots" / f"{trainer}.csv").read_text().splitlines()[0] for trainer in TRAINERS}
    assert headers == {"epoch,iter,train_loss,val_mIoU,val_acc"}


def test_dvc_artifacts_get_fetches_a_tagged_model(team_repo, tmp_path):
    """docs/experiments.md's "Models as DVC artifacts" block as written: tag a version, push the tag, get it."""
    repo, _ = team_repo
    code = block("docs/experiments.md", "dvc artifacts get").replace("<repo-url>", str(repo))
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], check=True)
    git(repo, "remote", "add", "origin", str(tmp_path / "origin.git"))  # where `git push --tags` sends the tag
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=repo, env=env(), capture_output=True, text=True, timeout=600
    )  # from the repository, as the page says: the tag is made there
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [(name, folder)] = re.findall(r"dvc artifacts get \S+ (\S+) -o (\S+)", code)
    assert name == yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]["registered_models"]["paddle"]
    fetched = repo / folder
    assert (fetched / "inference.pdiparams").is_file() and (fetched / "meta.json").is_file()
    shutil.rmtree(fetched)  # the workspace as the other tests expect it
    assert git(tmp_path / "origin.git", "tag").split() == [f"{name}@v1.0.0"]


def test_mlflow_ui_shows_both_runs_with_their_dataset_and_the_registered_models(team_repo, tmp_path):
    """A real headless Chromium on the real server: the Model training view, both runs and their dataset."""
    need_chromium()
    repo, uri = team_repo
    from stages.common.config import load_params
    from stages.tracking.runs import experiment_page

    page = experiment_page(load_params([f"mlflow.tracking_uri={uri}"], repo), uri)
    text = render(page, tmp_path / "experiment.png")
    print(f"screenshots: {tmp_path}")
    assert text[0].startswith("Runs - "), text[:20]  # the runs table, not the GenAI overview
    assert {"Model training", "Run Name", "Dataset", "Duration"} <= set(text)
    assert set(TRAINERS) <= set(text)
    digest = lock_md5(repo, "convert_json").removesuffix(".dir")
    assert text.count(f"data/processed ({digest})") == 2
    models = render(f"{uri}/#/models?workflowType=machine_learning", tmp_path / "models.png")
    assert {"doveseg-dovenet", "doveseg-paddleseg", "doveseg-segmenter"} <= set(models)
    assert any("champion" in line for line in models), models[:60]


def test_dag_shows_every_stage(team_repo):
    repo, _ = team_repo
    edges = {
        tuple(line.split())
        for line in dvc(repo, "dag", "--dot").stdout.replace('"', "").replace(";", "").splitlines()
        if "->" in line
    }
    edges = {(edge[0], edge[2]) for edge in edges}
    assert {
        ("convert_json", "build_splits"),
        ("build_splits", "train_paddle"),
        ("build_splits", "train_paddleseg"),
        ("train_paddle", "export@paddle"),
        ("train_paddleseg", "export@paddleseg"),
        ("export@paddle", "predict"),
        ("export@paddleseg", "predict"),
        ("predict", "report"),
    } <= edges
    assert ("train_paddle", "export@paddleseg") not in edges and ("train_paddleseg", "export@paddle") not in edges


def test_each_model_is_exported_checked_and_logged_with_its_onnx_model(team_repo):
    repo, uri = team_repo
    client = MlflowClient(uri)
    for model in MODELS:
        folder = repo / "exports" / model
        assert {p.name for p in folder.iterdir()} == {
            "inference.json",
            "inference.pdiparams",
            "meta.json",
            "deploy.yaml",
            "model.onnx",
        }
        deploy = yaml.safe_load((folder / "deploy.yaml").read_text())["Deploy"]
        assert (folder / deploy["model"]).is_file() and (folder / deploy["params"]).is_file()
        check = json.loads((repo / "metrics" / f"export_{model}.json").read_text())
        assert check["check_passed"] and check["opset"] == 13
        assert check["max_logit_diff"] <= check["logit_tolerance"] and check["mask_agreement"] >= 0.9999
        run_id = json.loads((repo / "models" / model / "mlflow_run.json").read_text())["run_id"]
        run = client.get_run(run_id)
        assert run.data.metrics["export/mask_agreement"] == pytest.approx(check["mask_agreement"])
        logged = {m.name for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run_id}
        # beside the trainer's Paddle model: the ONNX model and the served model (photos in, masks out)
        assert {"onnx_model", "photo_segmenter"} <= logged and len(logged) == 3
        assert json.loads((repo / "predictions" / model / "metrics.json").read_text())["engine"] == "onnxruntime"


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
    assert changed_stages(repo, lambda p: p["report"].update(worst_samples=p["report"]["worst_samples"] + 1)) == {
        "report"
    }
    assert changed_stages(repo, lambda p: p["predict"].update(batch_size=p["predict"]["batch_size"] + 1)) == {"predict"}
    assert "train_paddle" not in changed_stages(repo, lambda p: p["train_paddleseg"].update(lr=0.123))
    assert "train_paddleseg" not in changed_stages(repo, lambda p: p["train_paddle"].update(lr=0.123))
    assert "train_paddle" not in changed_stages(repo, lambda p: p["predict"].update(batch_size=3))
    assert changed_stages(repo, lambda p: p["predict"].update(engine="paddle")) == {"predict"}
    assert changed_stages(repo, lambda p: p["export"].update(opset=17)) == {"export@paddle", "export@paddleseg"}


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
    restored = dvc(
        repo, "repro", extra_env={"MLFLOW_TRACKING_URI": uri}
    ).stdout  # back to the committed params: from DVC's run cache
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
    for path in (
        "data/raw",
        "models/paddle/inference.pdiparams",
        "models/paddleseg/inference.pdiparams",
        "exports/paddle/model.onnx",
        "exports/paddleseg/deploy.yaml",
        "predictions",
        "reports/index.html",
        "reports/metrics.json",
    ):
        assert (clone / path).exists(), path


def test_exp_run_composes_params_and_tags_the_mlflow_run(team_repo):
    repo, uri = team_repo
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "-n",
            "lr-sweep-1",
            "-S",
            "profile=smoke",
            "-S",
            "train_paddle.lr=0.0021",
        ],
        cwd=repo,
        env={**env(), "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=1800,
    )
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


def test_exp_run_with_another_paddleseg_config_finishes_through_report(team_repo):
    """docs/paddleseg-models.md's block: PP-LiteSeg at the smoke profile's 32 px is too small for its static
    ONNX conversion (its 4x4 pooling of a 1x1 feature), so export keeps Paddle Inference only and predict uses it."""
    repo, uri = team_repo
    # the workspace as committed: the test before applied its experiment (lr 0.0021) there, and train_paddle,
    # whose checkpoints persist, never comes from DVC's run cache
    git(repo, "checkout", "--", ".")
    dvc(repo, "checkout", "--force")
    command = block("docs/paddleseg-models.md", "pp_liteseg_stdc1.yml")  # as written; the smoke profile is the
    result = subprocess.run(  # copy's default (tests/dvc_helpers.smoke_copy), so DVC composes that
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=repo,
        env={**env(), "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for stage in ("train_paddleseg", "export@paddleseg", "predict", "report"):
        assert f"Running stage '{stage}'" in result.stdout
    assert "Running stage 'train_paddle'" not in result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("export: warning: model 'paddleseg'")]
    export = json.loads((repo / "metrics" / "export_paddleseg.json").read_text())
    assert export["architecture"] == "PPLiteSeg" and export["onnx_conversion"] is None
    assert not (repo / "exports" / "paddleseg" / "model.onnx").exists()
    assert json.loads((repo / "predictions" / "paddleseg" / "metrics.json").read_text())["engine"] == "paddle"
    assert "paddleseg" in json.loads((repo / "reports" / "metrics.json").read_text())


def test_annotate_faster_drafts_then_retrains_on_the_corrected_photos(team_repo, tmp_path):
    """docs/annotate.md's block as written, after the trained smoke repro: preannotate drafts new photos, a person
    corrects them in labelme (a stand-in saves their annotations: tests/docs_pages.py), they move into data/raw,
    and `dvc repro` retrains on them. Last here: it changes the data."""
    repo, uri = team_repo
    git(repo, "checkout", "--", ".")  # the workspace as committed (the tests before ran experiments in it)
    dvc(repo, "checkout", "--force")
    annotated = tmp_path / "annotated"
    write_dataset(annotated, 4, seed=5)  # the demo generator, another seed: photos the models never saw
    (repo / "photos").mkdir()
    for index, photo in enumerate(sorted(annotated.glob("*.jpg"))):  # new names: data/raw has dove_000...
        labelme = json.loads(photo.with_suffix(".json").read_text())
        (annotated / f"new_{index}.json").write_text(json.dumps({**labelme, "imagePath": f"new_{index}.jpg"}))
        photo.rename(repo / "photos" / f"new_{index}.jpg")
    stand_in_venv(repo, {"labelme": labelme_stand_in("ANNOTATIONS")})
    workflow = block("docs/annotate.md", "# 1. Draft")
    started = time.perf_counter()
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", workflow],
        cwd=repo,
        env={**env(), "MLFLOW_TRACKING_URI": uri, "ANNOTATIONS": str(annotated)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    print(f"docs/annotate.md's workflow (preannotate, smoke dvc repro): {time.perf_counter() - started:.0f} s")
    ranking = (repo / "preannotate" / "ranking.csv").read_text().splitlines()
    assert len(ranking) == 5 and (repo / "preannotate" / "index.html").is_file()  # a header, then the 4 photos
    assert not list((repo / "photos").iterdir())  # all moved
    for index in range(4):
        assert (repo / "data" / "processed" / f"new_{index}" / "label.png").is_file()  # converted and trained on
    assert "Running stage 'train_paddle'" in done.stdout and "Running stage 'convert_json'" in done.stdout
    status = dvc(repo, "status").stdout  # data/raw is under DVC here (team_repo): only its .dvc file is stale
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert not [stage for stage in stages if f"{stage}:" in status or f"{stage}@" in status], status
