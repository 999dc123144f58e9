"""The export stage on real tiny models: a random-weight DoveNet and an upsampling red detector, converted to
ONNX for real, checked against Paddle Inference, read by PaddleSeg's deploy tooling, logged to MLflow with the
served model (photos in, masks out: tests/test_photo_segmenter.py and tests/test_serve.py try it)."""
import json
from pathlib import Path

import numpy as np
import onnx
import paddle
import pytest
import yaml
from mlflow.tracking import MlflowClient

from stages import export
from stages.common.config import StageError
from stages.data.images import read_rgb, save_rgb_png
from stages.data.split_lists import read_split
from stages.models.inference_model import ModelMeta, Predictor, preprocess, read_meta
from stages.models.inference_model import export as export_inference_model
from stages.models.onnx_model import OnnxPredictor, convert
from stages.training.tracking import read_run_id

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
        for file in ("inference.json", "inference.pdiparams", "meta.json"):  # the trainer's own files
            assert (folder / file).read_bytes() == (Path(cfg.paths.models_dir) / name / file).read_bytes()
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
    first_test_photos = [s.stem for s in read_split(cfg, "test")[:int(cfg.export.check.images)]]
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
        logged = [m for m in client.search_logged_models([run.info.experiment_id])
                  if m.source_run_id == run.info.run_id and m.name == export.ONNX_MODEL_NAME]
        assert len(logged) == 1
        assert logged[0].model_id in {o.model_id for o in run.outputs.model_outputs}
        artifacts = {a.path for a in client.list_logged_model_artifacts(logged[0].model_id)}
        assert {"MLmodel", "model.onnx"} <= artifacts
        # The served model: a new version of the serving registered model, from this run, named in the metrics.
        served = metrics["serving_model"]
        version = client.get_model_version(cfg.mlflow.registered_models.serving, served["version"])
        assert served == {"name": "doveseg-segmenter", "version": str(version.version),
                          "uri": f"models:/doveseg-segmenter/{version.version}"}
        assert version.run_id == run.info.run_id
        [segmenter] = [m for m in client.search_logged_models([run.info.experiment_id])
                       if m.source_run_id == run.info.run_id and m.name == export.SERVING_MODEL_NAME]
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
    assert yaml.safe_load((folder / "deploy.yaml").read_text()) == {"Deploy": {
        "model": "inference.json", "params": "inference.pdiparams",
        "transforms": [{"type": "Resize", "target_size": [width, height]},
                       {"type": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}],
        "input_shape": [None, 3, None, None], "output_op": "none", "output_dtype": "float32"}}

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
        tensors = [*model.graph.initializer, *(attribute.t for node in model.graph.node if node.op_type == "Constant"
                                              for attribute in node.attribute if attribute.name == "value")]
        weights = next(t for t in tensors if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4)
        weights.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(weights), weights.name))
        onnx.save(model, str(onnx_path))
    return _convert


def test_a_corrupted_onnx_model_fails_the_check_and_the_stage_writes_nothing(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_cfg(*make_dataset(tmp_path), *mlflow_store, "export.models=[paddleseg]")
    trained_models(tmp_path, cfg, names=("paddleseg",))
    monkeypatch.setattr(export, "convert", corrupting(convert))
    with pytest.raises(StageError, match=r"model 'paddleseg': ONNX model disagrees with Paddle Inference on 4 "
                                         r"test photos: max logit difference .* > .*; class ids agree on"):
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
    export_inference_model(ScaleFactorUpsampler(), tmp_path, ModelMeta((16, 16), CLASS_NAMES, (0.5,) * 3,
                                                                      (0.5,) * 3, "old"))
    with pytest.raises(StageError) as caught:  # not SystemExit: paddle2onnx's sys.exit is caught
        convert(tmp_path, tmp_path / "model.onnx", 13, "old")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("model 'old': paddle2onnx 2.1.0 cannot convert op pd_op.nearest_interp of ")
    assert "to ONNX opset 13: (Unimplemented) the 0th elementwise MUST be ir::FloatAttribute" in message
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
