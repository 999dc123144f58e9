"""The ready PaddleSeg configs beside conf/paddleseg/unet.yml, each through the whole pipeline at tiny sizes:
a few iterations of train_paddleseg, export (PP-LiteSeg's ONNX model at a static input size), predict on
onnxruntime and preannotate. One tiny data set and one MLflow store serve them all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from stages import export, preannotate, predict, train_paddleseg
from stages.common.config import load_params
from stages.training.paddleseg_config import resolve_config

from tiny_pipeline import make_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = {"dove_a": (30, 40), "dove_b": (47, 33), "dove_c": (64, 48), "dove_d": (21, 26), "empty_e": (36, 36)}
TINY = [
    "train_paddleseg.input_size=32",
    "train_paddleseg.crop_size=32",
    "train_paddleseg.iters=2",
    "train_paddleseg.batch_size=2",
    "train_paddleseg.eval_interval=2",
    "train_paddleseg.log_interval=1",
    "train_paddleseg.keep_checkpoint_max=1",
    "train_paddleseg.num_threads=1",
    "train_paddleseg.distributed.nproc=1",
    "export.models=[paddleseg]",
    "export.check.images=2",
    "predict.models=[paddleseg]",
]
# config -> (model type, training heads, how export converts it to ONNX, input size)
CONFIGS = {
    # PP-LiteSeg pools its 1/32 features adaptively to 1x1, 2x2 and 4x4: paddle2onnx's static conversion is
    # right when 4 divides that feature's size (128 px: 4x4); at 32 px it is 1x1 and export falls back to Paddle
    "pp_liteseg_stdc1.yml": ("PPLiteSeg", 3, "static", 128),
    "deeplabv3p_resnet18_vd.yml": ("DeepLabV3P", 1, "dynamic", 32),
    "segformer_b0.yml": ("SegFormer", 1, "dynamic", 32),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The tiny data set, a folder of photos to preannotate, and one MLflow store."""
    root = tmp_path_factory.mktemp("models")
    data = make_dataset(root / "data", SIZES)
    photos = root / "photos"
    photos.mkdir()
    for stem in ("dove_a", "dove_c"):
        source = next((root / "data" / "processed" / stem).glob("img.*"))
        shutil.copyfile(source, photos / f"{stem}{source.suffix}")
    store = [f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}", f"mlflow.artifact_location={root / 'mlruns'}"]
    return root, [*data, *store, *TINY], photos


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_config_resolves_with_one_loss_per_head(config):
    cfg = load_params([f"train_paddleseg.config=conf/paddleseg/{config}", "train_paddleseg.lr=0.01"], REPO_ROOT)
    document = resolve_config(cfg.train_paddleseg.config, cfg, {"labels": {"num_classes": 3}})
    model_type, heads, _, _ = CONFIGS[config]
    assert document["model"]["type"] == model_type and document["model"]["num_classes"] == 3
    assert len(document["loss"]["types"]) == len(document["loss"]["coef"]) == heads
    assert (
        document["lr_scheduler"]["learning_rate"] == 0.01 and document["batch_size"] == cfg.train_paddleseg.batch_size
    )
    crop = next(t for t in document["train_dataset"]["transforms"] if t["type"] == "RandomPaddingCrop")
    assert crop["crop_size"] == [cfg.train_paddleseg.crop_size] * 2
    assert document["val_dataset"]["transforms"][0]["target_size"] == [cfg.train_paddleseg.input_size] * 2
    assert "${" not in yaml.safe_dump(document)


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_config_trains_exports_predicts_and_preannotates(shared, config, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, overrides, photos = shared
    name = config.removesuffix(".yml")
    out = root / name  # this config's outputs; the data set is shared
    model_type, _, conversion, size = CONFIGS[config]
    cfg = load_params(
        [
            *overrides,
            f"train_paddleseg.config=conf/paddleseg/{config}",
            f"paths.models_dir={out / 'models'}",
            f"paths.exports_dir={out / 'exports'}",
            f"paths.checkpoints_dir={out / 'checkpoints'}",
            f"paths.metrics_dir={out / 'metrics'}",
            f"paths.plots_dir={out / 'plots'}",
            f"paths.predictions_dir={out / 'predictions'}",
            f"preannotate.input_dir={tmp_path / 'photos'}",
            "preannotate.model=paddleseg",
            f"preannotate.output_dir={tmp_path / 'review'}",
            f"train_paddleseg.input_size={size}",
        ],
        REPO_ROOT,
    )

    trained = train_paddleseg.run(cfg)
    assert trained["iters"] == 2 and 0 <= trained["best_val_mIoU"] <= 1
    assert json.loads((out / "models" / "paddleseg" / "meta.json").read_text())["architecture"] == model_type

    exported = export.run(cfg)["models"]["paddleseg"]
    assert exported["onnx_conversion"] == conversion and exported["check_passed"]
    assert exported["onnx_input_shape"] == ([None, 3, size, size] if conversion == "static" else [None, 3, None, None])

    predicted = predict.run(cfg)["models"]["paddleseg"]
    assert 0 <= predicted["mIoU"] <= 1
    assert json.loads((out / "predictions" / "paddleseg" / "metrics.json").read_text())["engine"] == "onnxruntime"

    shutil.copytree(photos, tmp_path / "photos")
    drafted = preannotate.run(cfg)
    assert drafted["counts"]["written"] == 2 and drafted["model"] == "paddleseg"
    assert sorted(p.name for p in (tmp_path / "photos").glob("*.json")) == ["dove_a.json", "dove_c.json"]
