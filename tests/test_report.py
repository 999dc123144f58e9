import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import mlflow.paddle
import numpy as np
import paddle
import pytest
from mlflow.tracking import MlflowClient
from paddle.static import InputSpec

from stages import predict, report
from stages.common.config import StageError
from stages.data.split_lists import split_file
from stages.evaluation.figures import curve_panels
from stages.models.inference_model import read_meta
from stages.reporting import document, results
from stages.tracking.logged_models import log_serving_model
from stages.tracking.registry import CHAMPION, read_registered_version, registered_model_name
from stages.tracking.runs import finished_run_client, read_run_id, training_run
from stages.training.summary import STEP_COLUMNS

from tiny_pipeline import export_both_models, make_cfg, make_dataset, red_detector, write_training_outputs

MODELS = ("paddle", "paddleseg")


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """One SQLite MLflow store for the session (a fresh one costs seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    return [f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}", f"mlflow.artifact_location={root / 'mlruns'}"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, mlflow_store):
    """Everything report reads, made for real: tiny models, their predictions, training outputs and runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("report")
        overrides = [*make_dataset(root), *mlflow_store]
        export_both_models(root / "models")
        cfg = make_cfg(*overrides)
        predict.run(cfg)
        for name, pool in zip(MODELS, (1, 2)):  # the models predict scored, logged and registered as trainers do
            write_training_outputs(cfg, name)
            with training_run(cfg, f"train_{name}", root / "models" / name / "mlflow_run.json"):
                mlflow.paddle.log_model(
                    red_detector(pool),
                    name=f"{name}_model",
                    registered_model_name=registered_model_name(cfg, name),
                    input_spec=[InputSpec([None, 3, 16, 16], "float32", "image")],
                    pip_requirements=mlflow.paddle.get_default_pip_requirements(),
                )
            # and the served model, as the export stage logs it
            client, run = finished_run_client(cfg, root / "models" / name / "mlflow_run.json")
            deploy_dir = root / "exports" / name
            log_serving_model(cfg, client, run, deploy_dir, read_meta(deploy_dir), name, root / "models" / name)
        yield overrides, report.run(cfg)


def test_metrics_json_holds_each_models_test_scores(pipeline):
    overrides, result = pipeline
    cfg = make_cfg(*overrides)
    metrics = json.loads((Path(cfg.paths.reports_dir) / "metrics.json").read_text())
    assert set(metrics) == {*MODELS, "champion"}
    for name in MODELS:
        scored = json.loads((Path(cfg.paths.predictions_dir) / name / "metrics.json").read_text())
        test = metrics[name]["test"]
        for key in ("mIoU", "mIoU_all_classes", "acc", "kappa", "mDice", "mDice_all_classes"):
            assert test[key] == scored["test"][key]
        assert set(test["IoU"]) == {"_background_", "dove"} and test["IoU"] == scored["test"]["IoU"]
        assert set(test["precision"]) == set(test["recall"]) == {"_background_", "dove"}
        assert test["samples"] == 5
        assert result["models"][name]["mIoU"] == test["mIoU"]


def test_report_files_and_figures_exist(pipeline):
    overrides, result = pipeline
    out = Path(make_cfg(*overrides).paths.reports_dir)
    assert (out / "report.md").is_file() and (out / "index.html").is_file()
    names = {p.name for p in (out / "figures").iterdir()}
    assert names == {
        "training_curves.png",
        "confusion_paddle.png",
        "confusion_paddleseg.png",
        "test_samples.png",
        "worst_samples.png",
    }
    assert set(result["figures"]) == names
    for path in (out / "figures").iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".reports")]


def test_report_md_compares_the_models_and_links_its_figures(pipeline):
    overrides, _ = pipeline
    out = Path(make_cfg(*overrides).paths.reports_dir)
    text = (out / "report.md").read_text()
    assert "| metric | paddle (DoveNet) | paddleseg (UNet) |" in text
    assert "| test mIoU |" in text and "| test mIoU, all classes (PaddleSeg) |" in text
    assert "| training time (s) |" in text and "| best validation mIoU |" in text
    assert "test IoU: dove" not in text and "training: " not in text  # headline rows only
    assert "| class | train pixels | IoU paddle | IoU paddleseg | Dice paddle | Dice paddleseg |" in text
    assert re.search(r"^\| dove \| - \| 0\.\d{4} \|", text, re.MULTILINE)
    assert "classes present in the test labels or the model's prediction" in text
    cfg = make_cfg(*overrides)
    tested = len(Path(split_file(cfg, "test")).read_text().splitlines())
    assert f"Test split: {tested} sample{'' if tested == 1 else 's'} from" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 5 and all((out / link).is_file() for link in links)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, name, value) for name, value in attrs if name in ("src", "href", "srcset", "data")]


def test_index_html_is_self_contained(pipeline):
    overrides, _ = pipeline
    page = (Path(make_cfg(*overrides).paths.reports_dir) / "index.html").read_text()
    parser = _Refs()
    parser.feed(page)
    assert parser.refs, "no images at all"
    assert all(
        tag == "img" and name == "src" and value.startswith("data:image/png;base64,")
        for tag, name, value in parser.refs
    ), [r[:2] + (r[2][:40],) for r in parser.refs]
    assert len(parser.refs) == 5 and "link" not in parser.tags and "script" not in parser.tags
    png = base64.b64decode(parser.refs[0][2].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "url(" not in page


def test_each_training_run_gets_the_test_metrics_and_the_report(pipeline):
    overrides, _ = pipeline
    cfg = make_cfg(*overrides)
    client = MlflowClient(str(cfg.mlflow.tracking_uri))
    for name in MODELS:
        run_id = read_run_id(Path(cfg.paths.models_dir) / name / "mlflow_run.json")
        run = client.get_run(run_id)
        scored = json.loads((Path(cfg.paths.predictions_dir) / name / "metrics.json").read_text())["test"]
        assert run.data.metrics["test/mIoU"] == pytest.approx(scored["mIoU"])
        assert run.data.metrics["test/IoU/dove"] == pytest.approx(scored["IoU"]["dove"])
        for key in (
            "test/acc",
            "test/kappa",
            "test/mDice",
            "test/mIoU_all_classes",
            "test/precision/dove",
            "test/recall/_background_",
        ):
            assert key in run.data.metrics
        assert run.info.status == "FINISHED"
        # Added without reopening the run: it ended (training) before the test metrics came.
        logged = client.get_metric_history(run_id, "test/mIoU")[0].timestamp
        assert run.info.end_time < logged, "report moved the run's end time"
        artifacts = {a.path for a in client.list_artifacts(run_id, "report")}
        assert {"report/index.html", "report/report.md", "report/metrics.json", "report/figures"} <= artifacts
        figures = {a.path for a in client.list_artifacts(run_id, "report/figures")}
        assert "report/figures/training_curves.png" in figures


def all_champions(client) -> list[tuple[str, str]]:
    """(registered model, version) of every `champion` alias in the store."""
    return [(m.name, str(m.aliases[CHAMPION])) for m in client.search_registered_models() if CHAMPION in m.aliases]


def test_the_champion_is_the_served_version_of_the_better_model_and_metrics_json_says_so(pipeline, monkeypatch):
    overrides, result = pipeline
    cfg = make_cfg(*overrides)
    client = MlflowClient(str(cfg.mlflow.tracking_uri))
    metrics = json.loads((Path(cfg.paths.reports_dir) / "metrics.json").read_text())
    test_miou = {name: metrics[name]["test"]["mIoU"] for name in MODELS}
    assert test_miou["paddle"] != test_miou["paddleseg"]
    winner = max(test_miou, key=test_miou.get)
    loser = min(test_miou, key=test_miou.get)
    run_ids = {name: read_run_id(Path(cfg.paths.models_dir) / name / "mlflow_run.json") for name in MODELS}
    assert (
        client.get_run(run_ids["paddle"]).data.tags["test_set"]
        == client.get_run(run_ids["paddleseg"]).data.tags["test_set"]
    )

    # One champion in the whole registry: the served model's version exported from the winner's training run.
    serving = cfg.mlflow.registered_models.serving
    served = client.get_model_version_by_alias(serving, CHAMPION)
    assert all_champions(client) == [(serving, str(served.version))]
    assert served.run_id == run_ids[winner]
    trained_as = "/".join(read_registered_version(Path(cfg.paths.models_dir) / winner / "mlflow_run.json"))
    champion = metrics["champion"]
    assert champion == result["champion"]
    assert champion == {
        "model": winner,
        "architecture": "DoveNet" if winner == "paddle" else "UNet",
        "registered_model": serving,
        "version": str(served.version),
        "uri": f"models:/{serving}@{CHAMPION}",
        "version_uri": f"models:/{serving}/{served.version}",
        "training_model": trained_as,
        "run_id": run_ids[winner],
        "test_mIoU": pytest.approx(test_miou[winner]),
        "test_set": client.get_run(run_ids[winner]).data.tags["test_set"],
    }
    assert result["champion_moved"]
    assert metrics[winner]["serving_model_uri"] == champion["version_uri"]
    assert metrics[loser]["serving_model_uri"].startswith(f"models:/{serving}/")
    assert metrics[loser]["serving_model_uri"] != champion["version_uri"]
    assert served.tags["training_model"] == trained_as and served.tags["model"] == winner

    # The champion's training version loads with MLflow's paddle flavour and predicts as the registered network did.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(cfg.mlflow.tracking_uri))  # as a user points MLflow at the store
    loaded = mlflow.paddle.load_model(f"models:/{trained_as}")
    batch = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype("float32")
    expected = red_detector(1 if winner == "paddle" else 2)(paddle.to_tensor(batch)).numpy()
    np.testing.assert_allclose(loaded(paddle.to_tensor(batch)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_an_experiment_scoring_only_the_other_model_leaves_the_one_champion_where_it_is(
    pipeline, tmp_path, monkeypatch, capsys
):
    """`dvc exp run -S 'predict.models=[<the worse model>]'` (DVC sets DVC_EXP_NAME): today's code crowned among
    the scored models only, leaving two champions and serving the worse model. A version whose run was deleted
    meanwhile does not stop the report."""
    overrides, result = pipeline
    cfg = make_cfg(*overrides)
    client = MlflowClient(str(cfg.mlflow.tracking_uri))
    before = all_champions(client)
    loser = min(MODELS, key=lambda name: result["models"][name]["mIoU"])
    serving = cfg.mlflow.registered_models.serving
    gone = client.create_run(client.get_experiment_by_name(str(cfg.mlflow.experiment)).experiment_id)
    client.create_model_version(serving, source=f"runs:/{gone.info.run_id}/x", run_id=gone.info.run_id)
    client.delete_run(gone.info.run_id)

    monkeypatch.setenv("DVC_EXP_NAME", "seg-only")
    again = report.run(make_cfg(*overrides, f"predict.models=[{loser}]", f"paths.reports_dir={tmp_path / 'reports'}"))
    assert all_champions(client) == before and len(before) == 1
    assert again["champion"]["version"] == result["champion"]["version"] and not again["champion_moved"]
    assert f"its training run {gone.info.run_id} is gone; skipped" in capsys.readouterr().err


def test_training_curves_draw_metrics_only(pipeline):
    overrides, _ = pipeline
    cfg = make_cfg(*overrides)
    curves = {name: results.read_curves(Path(cfg.paths.plots_dir) / f"train_{name}.csv") for name in MODELS}
    assert all(set(STEP_COLUMNS) <= set(table) for table in curves.values())  # the CSVs have both step columns
    assert curve_panels(curves, "epoch", STEP_COLUMNS) == ["train_loss", "val_mIoU", "val_acc"]


def test_worst_samples_come_lowest_mean_miou_first(pipeline):
    overrides, result = pipeline
    cfg = make_cfg(*overrides)
    per_model = [
        json.loads((Path(cfg.paths.predictions_dir) / name / "metrics.json").read_text())["samples"] for name in MODELS
    ]
    means = {a["stem"]: (a["mIoU"] + b["mIoU"]) / 2 for a, b in zip(*per_model)}
    assert result["worst_samples"] == sorted(means, key=lambda stem: (means[stem], stem))[:3]


def test_model_missing_from_predictions_is_a_clear_error_and_writes_nothing(pipeline, tmp_path):
    overrides, _ = pipeline
    cfg = make_cfg(*overrides, f"paths.reports_dir={tmp_path / 'reports'}", "predict.models=[paddle,ghost]")
    with pytest.raises(StageError, match=r"model 'ghost': missing predictions .*ghost"):
        report.run(cfg)
    assert not (tmp_path / "reports").exists()


def test_predictions_of_another_test_split_are_refused(pipeline, tmp_path):
    overrides, _ = pipeline
    cfg = make_cfg(*overrides)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "test.txt").write_text("dove_a/img.png dove_a/label.png\n")
    cfg = make_cfg(*overrides, f"data.splits_dir={splits}", f"paths.reports_dir={tmp_path / 'reports'}")
    with pytest.raises(StageError, match="rerun predict"):
        report.run(cfg)
    assert not (tmp_path / "reports").exists()


def test_unreachable_mlflow_store_fails_before_writing(pipeline, tmp_path, monkeypatch):
    overrides, _ = pipeline
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(
        *overrides,
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}",
        f"paths.reports_dir={tmp_path / 'reports'}",
    )
    with pytest.raises(StageError, match="MLflow"):
        report.run(cfg)
    assert not (tmp_path / "reports").exists()


def test_per_class_table_sets_apart_the_classes_never_seen_in_training(tmp_path):
    """Five classes: dove and twig trained (twig absent from the test set), rock only in test, leaf nowhere."""
    names = ["_background_", "dove", "twig", "rock", "leaf"]
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "class_pixel_share": {
                    "train": {
                        "_background_": 0.85,
                        "dove": 0.1,
                        "twig": 0.05,
                        "rock": 0.0,
                        "leaf": 0.0,
                        "__ignore__": 0.0,
                    }
                }
            }
        )
    )
    per_class = {
        "IoU": [0.9, 0.5, None, 0.0, None],
        "dice": [0.95, 0.66, None, 0.0, None],
        "precision": [0.9, 0.7, None, None, None],
        "recall": [0.99, 0.6, None, 0.0, None],
    }
    test = {key: dict(zip(names, values)) for key, values in per_class.items()}
    models = [
        results.ModelResult(name, name, tmp_path, {"class_names": names, "test": test}, {}, {}, tmp_path, "")
        for name in MODELS
    ]
    cfg = make_cfg(f"data.splits_dir={tmp_path}")
    blocks = document.per_class_blocks(cfg, models)
    [(_, header, rows)] = [block for block in blocks if block[0] == "table"]
    assert header == [
        "class",
        "train pixels",
        "IoU paddle",
        "IoU paddleseg",
        "Dice paddle",
        "Dice paddleseg",
        "precision paddle",
        "precision paddleseg",
        "recall paddle",
        "recall paddleseg",
    ]
    assert [row[0] for row in rows] == ["_background_", "dove", "twig", "rock"]  # unseen last; leaf: no scores
    assert rows[1][:4] == ["dove", "10.00%", "0.5000", "0.5000"] and rows[3][1] == "none"
    assert rows[2][2:] == ["-"] * 8 and rows[3][6:8] == ["-", "-"]  # undefined: "-", not 0
    unseen = blocks[-1][1]
    assert "Never seen in training" in unseen and unseen.endswith("rock, leaf.")
