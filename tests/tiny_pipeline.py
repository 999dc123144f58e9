"""Tiny inputs for the predict and report tests: a processed dataset, exported models, training outputs.

The "models" are real exported Paddle inference models with set weights: a 1x1 conv that scores "dove"
by how red a pixel is (optionally average-pooled, so its scores come out coarser than its input). The
dataset's doves are red boxes, so predictions are good but not perfect at the boundaries.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.config import load_params
from stages.data.images import save_label_png, save_rgb_png

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ("_background_", "dove")
# stem -> (height, width); one photo has no dove at all.
SAMPLE_SIZES = {"dove_a": (30, 40), "dove_b": (47, 33), "dove_c": (64, 48), "dove_d": (21, 26), "empty_e": (36, 36)}
# Processed images are img.jpg (convert_json keeps a photo's JPEG) or img.png (other formats): both occur here.
JPEG_STEMS = {"dove_b", "dove_c"}


def make_photo(rng: np.random.Generator, height: int, width: int, with_dove: bool):
    """A dull random photo with a red box (the dove), its label, and a 1-pixel ignore ring around the box."""
    rgb = rng.integers(0, 100, size=(height, width, 3), dtype=np.uint8)
    rgb[..., 1:] = rng.integers(0, 255, size=(height, width, 2), dtype=np.uint8)
    label = np.zeros((height, width), np.uint8)
    if with_dove:
        top, left = height // 4, width // 3
        bottom, right = top + height // 2, left + width // 2
        label[top - 1 : bottom + 1, left - 1 : right + 1] = 255
        label[top:bottom, left:right] = 1
        rgb[top:bottom, left:right] = (230, 40, 40)
    return rgb, label


def image_file(stem: str) -> str:
    return "img.jpg" if stem in JPEG_STEMS else "img.png"


def make_dataset(root: Path, sizes: dict[str, tuple[int, int]] = SAMPLE_SIZES, seed: int = 0) -> list[str]:
    """data/labels.txt, data/processed/<stem>/{img.png or img.jpg, label.png} and data/splits/*.txt under root.

    Returns the overrides that point a cfg at them (and every other output under root).
    """
    rng = np.random.default_rng(seed)
    processed = root / "processed"
    for stem, (height, width) in sizes.items():
        rgb, label = make_photo(rng, height, width, with_dove=not stem.startswith("empty"))
        (processed / stem).mkdir(parents=True, exist_ok=True)
        if stem in JPEG_STEMS:
            Image.fromarray(rgb).save(processed / stem / "img.jpg", quality=95)
        else:
            save_rgb_png(processed / stem / "img.png", rgb)
        save_label_png(processed / stem / "label.png", label)
    splits = root / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{stem}/{image_file(stem)} {stem}/label.png\n" for stem in sizes)
    for name in ("train", "val", "test"):
        (splits / f"{name}.txt").write_text(lines)
    (root / "labels.txt").write_text("__ignore__\n" + "\n".join(CLASS_NAMES) + "\n")
    return [
        f"data.labels={root / 'labels.txt'}",
        f"data.processed_dir={processed}",
        f"data.splits_dir={splits}",
        f"paths.models_dir={root / 'models'}",
        f"paths.exports_dir={root / 'exports'}",
        f"paths.metrics_dir={root / 'metrics'}",
        f"paths.plots_dir={root / 'plots'}",
        f"paths.predictions_dir={root / 'predictions'}",
        f"paths.reports_dir={root / 'reports'}",
        "predict.batch_size=2",
        "predict.cpu_threads=1",
    ]


def make_cfg(*overrides: str):
    return load_params(list(overrides), REPO_ROOT)


def red_detector(pool: int = 1, upsample: bool = False):
    """A paddle.nn.Layer scoring "dove" by redness; pool > 1 makes its scores coarser than its input,
    upsample=True brings them back up to the input's size (bilinear), as UNet's decoder does."""
    import paddle
    from paddle import nn

    class RedDetector(nn.Layer):
        def __init__(self):
            super().__init__()
            self.score = nn.Conv2D(3, 2, kernel_size=1)
            self.score.weight.set_value(np.array([0, 0, 0, 8, 0, 0], np.float32).reshape(2, 3, 1, 1))
            self.score.bias.set_value(np.array([0, -1], np.float32))
            self.pool = nn.AvgPool2D(pool) if pool > 1 else None
            self.upsample = upsample

        def forward(self, x):
            scores = self.score(x)
            if self.pool is not None:
                scores = self.pool(scores)
            if self.upsample:  # to an explicit size: paddle2onnx cannot convert Paddle 3.3's scale factors
                scores = nn.functional.interpolate(scores, size=paddle.shape(x)[2:], mode="bilinear")
            return scores

    paddle.seed(0)
    return RedDetector()


def export_model(
    model_dir: Path,
    input_size=(16, 16),
    pool: int = 1,
    architecture: str = "RedDetector",
    class_names=CLASS_NAMES,
    upsample: bool = False,
):
    from stages.models.inference_model import ModelMeta, export

    layer = red_detector(pool, upsample)
    export(layer, model_dir, ModelMeta(tuple(input_size), tuple(class_names), (0.5,) * 3, (0.5,) * 3, architecture))
    return layer


def deploy_model(model_dir: Path, deploy_dir: Path | None = None) -> Path:
    """What the export stage makes of a model folder, less its check and MLflow logging: the Paddle files,
    meta.json and model.onnx, in deploy_dir (default: <model_dir>/../../exports/<name>, as make_dataset's
    overrides expect)."""
    import shutil

    from stages.models.inference_model import META_NAME, model_files
    from stages.models.onnx_model import ONNX_NAME, convert

    deploy_dir = deploy_dir or model_dir.parent.parent / "exports" / model_dir.name
    deploy_dir.mkdir(parents=True, exist_ok=True)
    for source in (*model_files(model_dir), model_dir / META_NAME):
        shutil.copyfile(source, deploy_dir / source.name)
    convert(deploy_dir, deploy_dir / ONNX_NAME, 13, model_dir.name)
    return deploy_dir


def export_both_models(models_dir: Path) -> None:
    """The two model folders predict expects by default, with different input sizes and score sizes, as the
    trainers write them (models_dir) and as the export stage deploys them (models_dir/../exports)."""
    export_model(models_dir / "paddle", (16, 16), pool=1, architecture="DoveNet")
    export_model(models_dir / "paddleseg", (24, 20), pool=2, architecture="UNet")
    for name in ("paddle", "paddleseg"):
        deploy_model(models_dir / name)


def export_dovenet(model_dir: Path, size: int = 32) -> None:
    """A random-weight DoveNet, exported as train_paddle does. Its class scores get a wider spread than
    DoveNet's near-zero initial ones, so no pixel sits on a tie the two engines could break differently."""
    import paddle

    from stages.models.dovenet import DoveNet
    from stages.models.inference_model import ModelMeta, export

    paddle.seed(0)
    net = DoveNet(len(CLASS_NAMES))
    net.output_conv.weight.set_value(paddle.randn(net.output_conv.weight.shape) * 0.1)
    export(net, model_dir, ModelMeta((size, size), CLASS_NAMES, (0.5,) * 3, (0.5,) * 3, "DoveNet"))


def trained_models(root: Path, cfg, names=("paddle", "paddleseg")) -> None:
    """What the trainers leave for the export stage: models/<name>/ (a random-weight DoveNet, an upsampling
    red detector as the UNet) and a finished MLflow run named in its mlflow_run.json."""
    from stages.tracking.runs import training_run

    if "paddle" in names:
        export_dovenet(root / "models" / "paddle")
    if "paddleseg" in names:
        export_model(root / "models" / "paddleseg", (24, 20), pool=2, upsample=True, architecture="UNet")
    for name in names:
        with training_run(cfg, f"train_{name}", root / "models" / name / "mlflow_run.json"):
            pass


def write_training_outputs(cfg, name: str, epochs: int = 4) -> None:
    """metrics/train_<name>.json and plots/train_<name>.csv as the trainers write them."""
    metrics_dir, plots_dir = Path(cfg.paths.metrics_dir), Path(cfg.paths.plots_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    (metrics_dir / f"train_{name}.json").write_text(
        json.dumps({"best_val_mIoU": 0.7, "train_seconds": 12.5, "num_params": 1234, "epochs": epochs})
    )
    with open(plots_dir / f"train_{name}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "iter", "train_loss", "val_mIoU", "val_acc"])
        for epoch in range(1, epochs + 1):
            writer.writerow([epoch, 3 * epoch, 1.0 / epoch, 0.5 + 0.05 * epoch, 0.8 + 0.02 * epoch])


def read_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def flat_keys(data: dict, prefix: str = "") -> set[str]:
    """The keys of a nested dict as `dvc metrics show` lists them ("best_val_IoU.dove")."""
    keys = set()
    for key, value in data.items():
        keys |= flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return keys


def metrics_schema(class_names=CLASS_NAMES) -> set[str]:
    """The keys of metrics/train_<model>.json, from the trainers' shared builder."""
    from stages.training.summary import training_metrics

    return flat_keys(
        training_metrics(
            num_params={"total": 1, "trainable": 1},
            best_scores=None,
            class_names=class_names,
            iters=4,
            best_iter=2,
            resumed_from_iter=0,
            iters_per_epoch=2,
            train_seconds=1.0,
            train_step_seconds=1.0,
            train_images=8,
            input_size=32,
            crop_size=32,
            batch_size=2,
            device="cpu",
        )
    )


def write_photos(folder: Path, seed: int = 1) -> list[Path]:
    """Two photo files as people send them: a PNG with an alpha channel, and a JPEG stored sideways with the
    EXIF orientation that turns it upright (6: a quarter turn clockwise), as phones store portrait shots."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    upright, _ = make_photo(rng, 45, 60, with_dove=True)
    png = folder / "upright.png"
    Image.fromarray(np.dstack([upright, np.full(upright.shape[:2], 200, np.uint8)])).save(png)
    sideways, _ = make_photo(rng, 52, 36, with_dove=True)
    jpeg = folder / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(sideways).save(jpeg, quality=95, exif=exif.tobytes())
    return [png, jpeg]


def load_served_model(uri: str):
    """mlflow.pyfunc.load_model(uri), leaving sys.path as it was: loading puts the model's code/ folder (a copy
    of stages/) first, and later imports of stages modules in this process would come from that copy."""
    import sys

    import mlflow.pyfunc

    saved = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(uri)
    finally:
        sys.path[:] = saved
