"""The export stage on real tiny models: a random-weight DoveNet and an upsampling red detector, converted to
ONNX for real, checked against Paddle Inference, read by PaddleSeg's deploy tooling, logged to MLflow with the
served model (photos in, masks out: tests/test_photo_segmenter.py and tests/test_serve.py try it)."""

import json
import re
from pathlib import Path

import numpy as np
import onnx
import paddle
import pytest
import yaml
from mlflow.tracking import MlflowClient

from stages import export, predict
from stages.common.config import StageError
from stages.data.images import read_rgb, save_rgb_png
from stages.data.split_lists import read_split
from stages.models import onnx_conversion
from stages.models.inference_model import ModelMeta, Predictor, preprocess, read_meta
from stages.models.inference_model import export as export_inference_model
from stages.models.onnx_model import ConversionError, OnnxPredictor, convert
from stages.tracking.logged_models import ONNX_MODEL_NAME, SERVING_MODEL_NAME
from stages.tracking.runs import read_run_id, training_run

from tiny_pipeline import CLASS_NAMES, export_model, make_cfg, make_dataset, trained_models

MODELS = ("paddle", "paddleseg")
DEPLOY_FILES = {"inference.json", "inference.pdiparams", "meta.json", "deploy.yaml", "model.onnx"}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite MLflow store for this module (a fresh one costs seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    return [f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}", f"mlflow.artifact_location={root / 'mlruns'}"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mlflow_store):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("export")
        overrides = [*make_dataset(root), *mlflow_store]
        cfg = make_cfg(*overrides)
        trained_models(root, cfg)
        client = MlflowClient(str(cfg.mlflow.tracking_uri))
        runs = {name: client.get_run(read_run_id(root / "models" / name / "mlflow_run.json")) for name in MODELS}
        yield cfg, export.run(cfg), runs


def test_each_model_gets_a_deploy_folder_with_a_dynamic_onnx_model(exported):
    cfg, result, _ = exported
    for name in MODELS:
        folder = Path(cfg.paths.exports_dir) / name
        assert {p.name for p in folder.iterdir()} == DEPLOY_FILES
        for file in ("inference.json", "inference.pdiparams"):  # the trainer's own files
            assert (folder / file).read_bytes() == (Path(cfg.paths.models_dir) / name / file).read_bytes()
        # the trainer's meta.json, plus what the ONNX model is
        trainer_meta = json.loads((Path(cfg.paths.models_dir) / name / "meta.json").read_text())
        assert json.loads((folder / "meta.json").read_text()) == {
            **trainer_meta,
            "onnx": {"file": "model.onnx", "conversion": "dynamic", "input_shape": [None, 3, None, None]},
        }
        assert result["models"][name]["onnx_conversion"] == "dynamic"
        model = onnx.load(str(folder / "model.onnx"))
        onnx.checker.check_model(model)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
        assert result["models"][name]["onnx_input_shape"] == [None, 3, None, None]
        # Any batch and size (DoveNet: multiples of 16), not just the trained input size: same logits.
        batch = np.random.default_rng(0).normal(size=(3, 3, 48, 32)).astype(np.float32)
        expected = Predictor(folder, use_gpu=False, cpu_threads=1).logits(batch)
        logits = OnnxPredictor(folder, cpu_threads=1).logits(batch)
        assert logits.shape == expected.shape == (3, 2, 48, 32)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert not [p for p in Path(cfg.paths.exports_dir).iterdir() if p.name.startswith(".")]


def test_the_check_passes_and_its_figures_go_to_the_metrics_file_and_the_training_run(exported):
    cfg, result, runs_before = exported
    first_test_photos = [s.stem for s in read_split(cfg, "test")[: int(cfg.export.check.images)]]
    client = MlflowClient(str(cfg.mlflow.tracking_uri))
    for name in MODELS:
        metrics = json.loads((Path(cfg.paths.metrics_dir) / f"export_{name}.json").read_text())
        assert metrics == result["models"][name]
        assert metrics["check_passed"] and metrics["check_images"] == first_test_photos
        assert 0 <= metrics["max_logit_diff"] <= metrics["logit_tolerance"]
        assert metrics["logit_tolerance"] == pytest.approx(1e-4 * max(1.0, metrics["max_abs_logit"]))
        assert metrics["mask_agreement"] >= 0.9999 and metrics["opset"] == 13
        before = runs_before[name]
        run = client.get_run(before.info.run_id)
        assert run.data.metrics["export/max_logit_diff"] == pytest.approx(metrics["max_logit_diff"])
        assert run.data.metrics["export/mask_agreement"] == pytest.approx(metrics["mask_agreement"])
        assert run.data.tags["onnx_opset"] == "13"
        # Added to the finished run without reopening it: its status and end time stay.
        assert (run.info.status, run.info.end_time) == ("FINISHED", before.info.end_time)
        logged = [
            m
            for m in client.search_logged_models([run.info.experiment_id])
            if m.source_run_id == run.info.run_id and m.name == ONNX_MODEL_NAME
        ]
        assert len(logged) == 1
        assert logged[0].model_id in {o.model_id for o in run.outputs.model_outputs}
        artifacts = {a.path for a in client.list_logged_model_artifacts(logged[0].model_id)}
        assert {"MLmodel", "model.onnx"} <= artifacts
        # The served model: a new version of the serving registered model, from this run, named in the metrics.
        served = metrics["serving_model"]
        version = client.get_model_version(cfg.mlflow.registered_models.serving, served["version"])
        assert served == {
            "name": "doveseg-segmenter",
            "version": str(version.version),
            "uri": f"models:/doveseg-segmenter/{version.version}",
        }
        assert version.run_id == run.info.run_id
        [segmenter] = [
            m
            for m in client.search_logged_models([run.info.experiment_id])
            if m.source_run_id == run.info.run_id and m.name == SERVING_MODEL_NAME
        ]
        assert segmenter.model_id in {o.model_id for o in run.outputs.model_outputs}
        artifacts = {a.path for a in client.list_logged_model_artifacts(segmenter.model_id)}
        assert {"MLmodel", "python_model.pkl", "code", "artifacts"} <= artifacts


def test_deploy_yaml_is_paddleseg_deploy_format_and_its_tooling_reads_it(exported, tmp_path):
    from paddle import inference
    from paddleseg.deploy.infer import DeployConfig

    cfg, _, _ = exported
    folder = Path(cfg.paths.exports_dir) / "paddleseg"
    meta = read_meta(folder)
    height, width = meta.input_size
    assert yaml.safe_load((folder / "deploy.yaml").read_text()) == {
        "Deploy": {
            "model": "inference.json",
            "params": "inference.pdiparams",
            "transforms": [
                {"type": "Resize", "target_size": [width, height]},
                {"type": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
            ],
            "input_shape": [None, 3, None, None],
            "output_op": "none",
            "output_dtype": "float32",
        }
    }

    deploy = DeployConfig(str(folder / "deploy.yaml"))
    assert Path(deploy.model) == folder / "inference.json" and Path(deploy.params) == folder / "inference.pdiparams"
    # PaddleSeg's transforms on a photo file, as its deploy scripts apply them: the same input as predict's.
    photo = tmp_path / "photo.png"
    save_rgb_png(photo, np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))
    image = deploy.transforms({"img": str(photo)})["img"]
    np.testing.assert_allclose(image, preprocess(read_rgb(photo), meta), atol=1e-6)
    # Paddle Inference on the files deploy.yaml names gives the ONNX model's logits. (Without oneDNN: Paddle
    # 3.3.1's oneDNN placement fails on interpolate ops; stages.models.inference_model.Predictor works around it.)
    config = inference.Config(deploy.model, deploy.params)
    config.disable_mkldnn()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape([1, *image.shape])
    handle.copy_from_cpu(image[None].astype(np.float32))
    predictor.run()
    logits = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    np.testing.assert_allclose(logits, OnnxPredictor(folder).logits(image[None]), atol=1e-4)


def corrupting(convert_function):
    """convert, then flip the sign of the model's first weight tensor: a wrong ONNX model that still loads."""

    def _convert(model_dir, onnx_path, opset, model_name):
        convert_function(model_dir, onnx_path, opset, model_name)
        model = onnx.load(str(onnx_path))
        tensors = [
            *model.graph.initializer,
            *(
                attribute.t
                for node in model.graph.node
                if node.op_type == "Constant"
                for attribute in node.attribute
                if attribute.name == "value"
            ),
        ]
        weights = next(t for t in tensors if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4)
        weights.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(weights), weights.name))
        onnx.save(model, str(onnx_path))

    return _convert


def test_a_corrupted_onnx_model_fails_the_check_and_the_stage_writes_nothing(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(*make_dataset(tmp_path), *mlflow_store, "export.models=[paddleseg]")
    trained_models(tmp_path, cfg, names=("paddleseg",))
    monkeypatch.setattr(onnx_conversion, "convert", corrupting(convert))
    with pytest.raises(
        StageError,
        match=r"model 'paddleseg': ONNX model disagrees with Paddle Inference on 4 "
        r"test photos: max logit difference .* > .*; class ids agree on",
    ):
        export.run(cfg)
    assert not Path(cfg.paths.exports_dir).exists() or not list(Path(cfg.paths.exports_dir).iterdir())
    assert not (Path(cfg.paths.metrics_dir) / "export_paddleseg.json").exists()
    run = MlflowClient(str(cfg.mlflow.tracking_uri)).get_run(read_run_id(tmp_path / "models/paddleseg/mlflow_run.json"))
    assert not [key for key in run.data.metrics if key.startswith("export/")]
    assert not run.outputs.model_outputs


class ScaleFactorUpsampler(paddle.nn.Layer):
    """Upsamples by a scale factor, as DoveNet did before: paddle2onnx 2.1 cannot convert that from Paddle 3.3."""

    def __init__(self):
        super().__init__()
        self.score = paddle.nn.Conv2D(3, 2, kernel_size=1)
        self.pool = paddle.nn.AvgPool2D(2)
        self.upsample = paddle.nn.Upsample(scale_factor=2.0)

    def forward(self, x):
        return self.upsample(self.pool(self.score(x)))


def test_a_failed_conversion_is_one_line_naming_the_model_and_the_op(tmp_path):
    export_inference_model(
        ScaleFactorUpsampler(), tmp_path, ModelMeta((16, 16), CLASS_NAMES, (0.5,) * 3, (0.5,) * 3, "old")
    )
    with pytest.raises(StageError) as caught:  # not SystemExit: paddle2onnx's sys.exit is caught
        convert(tmp_path, tmp_path / "model.onnx", 13, "old")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("model 'old': paddle2onnx 2.1.0 cannot convert op pd_op.nearest_interp to ONNX ")
    assert "to ONNX opset 13: (Unimplemented) the 0th elementwise MUST be ir::FloatAttribute" in message
    assert re.search(r"\(the converter exited with status \d+\)$", message)  # paddle2onnx's sys.exit
    assert not (tmp_path / "model.onnx").exists()


def test_bad_params_and_untrained_models_fail_before_writing(tmp_path):
    overrides = make_dataset(tmp_path)
    with pytest.raises(StageError, match=r"export.opset must be within 7..19"):
        export.run(make_cfg(*overrides, "export.opset=5"))
    with pytest.raises(StageError, match=r"export.check.min_mask_agreement"):
        export.run(make_cfg(*overrides, "export.check.min_mask_agreement=1.5"))
    with pytest.raises(StageError, match=r"export.serving.max_image_pixels must be >= 1, got 0"):
        export.run(make_cfg(*overrides, "export.serving.max_image_pixels=0"))
    with pytest.raises(StageError, match=r"mlflow.registered_models.serving is missing"):
        export.run(make_cfg(*overrides, "~mlflow.registered_models.serving"))
    with pytest.raises(StageError, match=r"(?s)train the models first.*model 'paddle'.*model 'paddleseg'"):
        export.run(make_cfg(*overrides))
    export_model(tmp_path / "models" / "paddle")
    with pytest.raises(StageError, match=r"mlflow_run.json: no MLflow run id"):
        export.run(make_cfg(*overrides, "export.models=[paddle]"))
    assert not Path(make_cfg(*overrides).paths.exports_dir).exists()


# --- models paddle2onnx aborts on: a static conversion, or Paddle Inference only ---------------------------


class PooledRedDetector(paddle.nn.Layer):
    """Scores "dove" by redness, plus a context term from adaptive pooling (as PP-LiteSeg's context module):
    paddle2onnx 2.1 aborts the process (SIGABRT) on adaptive pooling of a dynamic height and width."""

    def __init__(self, num_classes: int = 2, pretrained=None):
        super().__init__()
        self.score = paddle.nn.Conv2D(3, num_classes, kernel_size=1)
        self.score.weight.set_value(np.array([0, 0, 0, 8, 0, 0], np.float32).reshape(2, 3, 1, 1))
        self.score.bias.set_value(np.array([0, -1], np.float32))
        self.context = paddle.nn.AdaptiveAvgPool2D(2)

    def forward(self, x):
        scores = self.score(x)
        context = paddle.nn.functional.interpolate(self.context(scores), size=paddle.shape(x)[2:], mode="bilinear")
        return [scores + 0.1 * context]  # a list of logits, as PaddleSeg's models return


def pooled_model(model_dir: Path, cfg=None, paddleseg_config: bool = False) -> None:
    """models/<name>/ as a trainer writes it; with ``paddleseg_config``, train_paddleseg's paddleseg.yml and
    model.pdparams too (the model registered with PaddleSeg, so that its builder can rebuild it)."""
    from paddleseg.cvlibs import manager

    if "PooledRedDetector" not in manager.MODELS.components_dict:
        manager.MODELS.add_component(PooledRedDetector)
    model = PooledRedDetector()
    meta = ModelMeta((24, 20), CLASS_NAMES, (0.5,) * 3, (0.5,) * 3, "PooledRedDetector")

    class FirstLogits(paddle.nn.Layer):  # what train_paddleseg exports: the first of the model's logits
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)[0]

    export_inference_model(FirstLogits(), model_dir, meta)
    if paddleseg_config:
        paddle.save(model.state_dict(), str(model_dir / "model.pdparams"))
        (model_dir / "paddleseg.yml").write_text(
            yaml.safe_dump(
                {
                    "batch_size": 2,
                    "iters": 1,
                    "train_dataset": {"type": "Dataset", "mode": "train"},
                    "model": {"type": "PooledRedDetector", "num_classes": 2, "pretrained": "https://127.0.0.1:9/none"},
                }
            )
        )


def test_a_converter_abort_is_one_line_naming_the_model_the_op_and_the_reason(tmp_path):
    pooled_model(tmp_path)
    with pytest.raises(ConversionError) as caught:
        convert(tmp_path, tmp_path / "model.onnx", 13, "pooled")
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "model 'pooled': paddle2onnx 2.1.0 cannot convert op pd_op.pool2d to ONNX opset 13: "
        "Adaptive only support static input shape (the converter was killed by SIGABRT)"
    )
    assert caught.value.needs_static_shape and not (tmp_path / "model.onnx").exists()


def test_every_way_the_converter_can_end_is_named():
    from stages.models.onnx_model import how_it_ended

    assert how_it_ended(-6) == "the converter was killed by SIGABRT"
    assert how_it_ended(-11) == "the converter was killed by SIGSEGV"
    assert how_it_ended(1) == "the converter exited with status 1"  # paddle2onnx's sys.exit(1)


@pytest.mark.slow
def test_a_paddleseg_model_with_adaptive_pooling_exports_at_a_static_size(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(*make_dataset(tmp_path), *mlflow_store, "export.models=[paddleseg]")
    pooled_model(tmp_path / "models" / "paddleseg", paddleseg_config=True)
    with training_run(cfg, "train_paddleseg", tmp_path / "models" / "paddleseg" / "mlflow_run.json"):
        pass
    metrics = export.run(cfg)["models"]["paddleseg"]
    folder = Path(cfg.paths.exports_dir) / "paddleseg"
    assert {p.name for p in folder.iterdir()} == DEPLOY_FILES
    assert metrics["onnx_conversion"] == "static" and metrics["check_passed"]
    assert "cannot convert op pd_op.pool2d" in metrics["dynamic_conversion_error"]
    assert metrics["onnx_input_shape"] == [None, 3, 24, 20] and metrics["mask_agreement"] >= 0.9999
    assert json.loads((Path(cfg.paths.metrics_dir) / "export_paddleseg.json").read_text()) == metrics
    assert json.loads((folder / "meta.json").read_text())["onnx"] == {
        "file": "model.onnx",
        "conversion": "static",
        "input_shape": [None, 3, 24, 20],
    }
    assert yaml.safe_load((folder / "deploy.yaml").read_text())["Deploy"]["input_shape"] == [None, 3, 24, 20]
    batch = np.random.default_rng(0).normal(size=(3, 3, 24, 20)).astype(np.float32)  # any batch
    np.testing.assert_allclose(
        OnnxPredictor(folder).logits(batch), Predictor(folder, use_gpu=False).logits(batch), atol=1e-4
    )
    # predict on onnxruntime: every photo resized to the model's input size, then masks at full size
    predicted = predict.run(make_cfg(*make_dataset(tmp_path), "predict.models=[paddleseg]"))
    assert predicted["models"]["paddleseg"]["mIoU"] > 0.5
    assert (
        json.loads((Path(cfg.paths.predictions_dir) / "paddleseg" / "metrics.json").read_text())["engine"]
        == "onnxruntime"
    )


@pytest.mark.slow
def test_a_static_conversion_that_disagrees_with_paddle_falls_back_to_paddle(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(*make_dataset(tmp_path), *mlflow_store, "export.models=[paddleseg]")
    pooled_model(tmp_path / "models" / "paddleseg", paddleseg_config=True)
    with training_run(cfg, "train_paddleseg", tmp_path / "models" / "paddleseg" / "mlflow_run.json"):
        pass
    monkeypatch.setattr(
        onnx_conversion, "convert", corrupting(convert)
    )  # the dynamic attempt aborts, the static one is wrong
    metrics = export.run(cfg)["models"]["paddleseg"]
    assert metrics["onnx_conversion"] is None and metrics["check_passed"] is None
    assert (
        "; converted at a static 24x20, it disagrees with Paddle Inference on 4 test photos: max logit "
        "difference" in metrics["onnx_missing"]
    )
    assert not (Path(cfg.paths.exports_dir) / "paddleseg" / "model.onnx").exists()


def test_a_model_onnx_cannot_hold_is_exported_for_paddle_and_predicted_with_it(
    tmp_path, mlflow_store, monkeypatch, capfd
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = [*make_dataset(tmp_path), *mlflow_store]
    cfg = make_cfg(*overrides, "export.models=[paddleseg]")
    pooled_model(tmp_path / "models" / "paddleseg")  # no PaddleSeg config to rebuild it at a static size
    with training_run(cfg, "train_paddleseg", tmp_path / "models" / "paddleseg" / "mlflow_run.json") as active:
        pass
    capfd.readouterr()
    metrics = export.run(cfg)["models"]["paddleseg"]
    warnings = [line for line in capfd.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "export: warning: model 'paddleseg': paddle2onnx 2.1.0 cannot convert op pd_op.pool2d"
    )
    assert "Paddle Inference only" in warnings[0]
    folder = Path(cfg.paths.exports_dir) / "paddleseg"
    assert {p.name for p in folder.iterdir()} == DEPLOY_FILES - {"model.onnx"}
    assert metrics["onnx_conversion"] is None and metrics["check_passed"] is None
    assert "Adaptive only support static input shape" in metrics["onnx_missing"]
    assert json.loads((folder / "meta.json").read_text())["onnx"] == {"file": None, "missing": metrics["onnx_missing"]}
    assert yaml.safe_load((folder / "deploy.yaml").read_text())["Deploy"]["model"] == "inference.json"
    tags = MlflowClient(str(cfg.mlflow.tracking_uri)).get_run(active.info.run_id).data.tags
    assert tags["onnx_conversion"] == "None" and "pd_op.pool2d" in tags["onnx_missing"]

    # predict (engine onnxruntime, the default) falls back to Paddle Inference for this model, with a warning
    predicted = predict.run(make_cfg(*overrides, "predict.models=[paddleseg]"))
    assert "predict: warning: model 'paddleseg' has no ONNX model" in capfd.readouterr().err
    assert predicted["models"]["paddleseg"]["mIoU"] > 0.5
    assert (
        json.loads((Path(cfg.paths.predictions_dir) / "paddleseg" / "metrics.json").read_text())["engine"] == "paddle"
    )
