"""Benchmark predict's two engines (Paddle Inference, onnxruntime) against PaddleSeg's paddleseg.core.predict.

For each model (PaddleSeg's UNet and DoveNet, random init, 2 classes) and input size (the demo profile's,
and 512 px), the same photos are predicted three ways with the same weights:
  paddleseg.core.predict         dygraph, one photo at a time, from the weights saved as a state dict
  predict, predict.engine=paddle       Paddle Inference (oneDNN) on the export stage's files, batched
  predict, predict.engine=onnxruntime  onnxruntime on the export stage's model.onnx, batched
Each writes a pseudo-colour PNG and an overlay per photo (the stage also the class-id PNG). Times are wall
clock of the whole call, model loading included, best of --repeat (interleaved, so load from other work hits
all alike). "model only" times the engines' logits on the same batches, without photo decoding or writing.
Ratios are against paddleseg.core.predict and, for onnxruntime, against Paddle Inference, from the same run.

    .venv/bin/python bench/predict.py                          # 16 generated 640x480 JPEGs, demo sizes and 512
    .venv/bin/python bench/predict.py --models unet --sizes 128 --images 40
    .venv/bin/python bench/predict.py --test-split             # data/processed's test photos (after build_splits)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from stages import predict  # noqa: E402
from stages.common.config import compose_config, load_params  # noqa: E402
from stages.data.images import read_label_png, read_rgb  # noqa: E402
from stages.data.split_lists import read_split  # noqa: E402
from stages.models.inference_model import META_NAME, ModelMeta, Predictor, export, model_files, preprocess  # noqa: E402
from stages.models.onnx_model import ONNX_NAME, OnnxPredictor, convert  # noqa: E402
from stages.prediction.files import CLASS_ID_DIR  # noqa: E402

MEAN = STD = (0.5, 0.5, 0.5)
ENGINES = ("paddle", "onnxruntime")


def demo_like_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """Smooth random backgrounds with a pale ellipse (the dove), saved as JPEG like phone photos."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:height, :width]
    paths = []
    for index in range(count):
        coarse = rng.integers(40, 200, size=(6, 8, 3), dtype=np.uint8)
        rgb = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).copy()
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
        rgb[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = (225, 225, 230)
        path = folder / f"photo_{index:03d}.jpg"
        Image.fromarray(rgb).save(path, quality=90)
        paths.append(path)
    return paths


def test_split_photos(folder: Path) -> list[Path]:
    """The test split's img.png files, linked into one folder (the stage's folder mode reads a folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample in read_split(load_params([], REPO_ROOT), "test"):
        link = folder / f"{sample.stem}.png"
        link.symlink_to(sample.image.resolve())
        paths.append(link)
    return paths


def demo_sizes() -> dict[str, int]:
    params = compose_config(["profile=demo"], REPO_ROOT / "conf")
    return {"unet": int(params.train_paddleseg.input_size), "dovenet": int(params.train_paddle.input_size)}


def make_model(work: Path, name: str, size: int):
    """A random-init model: its state dict for core.predict, and its export + deploy folder for the stage."""
    import paddle
    from paddleseg.models import UNet

    from stages.models.dovenet import DoveNet

    class FirstLogit(paddle.nn.Layer):
        """PaddleSeg models return a list of logits; inference wants the first (the final one)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)[0]

    class AsList(paddle.nn.Layer):
        """DoveNet returns logits; PaddleSeg's core.predict wants a list of them."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return [self.model(x)]

    paddle.seed(0)
    if name == "unet":
        model = UNet(num_classes=2)
        exported, architecture = FirstLogit(model), "UNet"
    else:
        net = DoveNet(2)
        net.output_conv.weight.set_value(paddle.randn(net.output_conv.weight.shape) * 0.1)  # no near-ties
        model, exported, architecture = AsList(net), net, "DoveNet"
    model.eval()
    weights = work / f"{name}_{size}.pdparams"
    paddle.save(model.state_dict(), str(weights))
    model_dir, deploy_dir = work / "models" / name, work / "exports" / name
    export(exported, model_dir, ModelMeta((size, size), ("_background_", "dove"), MEAN, STD, architecture))
    deploy_dir.mkdir(parents=True, exist_ok=True)
    for source in (*model_files(model_dir), model_dir / META_NAME):  # what the export stage does, less its check
        (deploy_dir / source.name).write_bytes(source.read_bytes())
    convert(deploy_dir, deploy_dir / ONNX_NAME, 13, name)
    return model, weights


def run_paddleseg(model, weights: Path, photos: list[Path], size: int, out: Path) -> None:
    from paddleseg.core import predict as paddleseg_predict
    from paddleseg.transforms import Compose, Normalize, Resize

    transforms = Compose([Resize(target_size=(size, size)), Normalize(mean=MEAN, std=STD)])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        paddleseg_predict(
            model,
            model_path=str(weights),
            transforms=transforms,
            image_list=[str(p) for p in photos],
            image_dir=str(photos[0].parent),
            save_dir=str(out),
        )


def run_stage(work: Path, name: str, engine: str, photo_dir: Path, out: Path, batch_size: int, threads: int) -> dict:
    cfg = load_params(
        [
            f"paths.exports_dir={work / 'exports'}",
            f"predict.models=[{name}]",
            f"predict.engine={engine}",
            f"predict.input_dir={photo_dir}",
            f"predict.output_dir={out}",
            f"predict.batch_size={batch_size}",
            f"predict.cpu_threads={threads}",
        ],
        REPO_ROOT,
    )
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        return predict.run(cfg)


def model_only_rates(
    work: Path, name: str, photos: list[Path], batch_size: int, threads: int, repeat: int
) -> dict[str, float]:
    """img/s of each engine's logits alone, on the stage's preprocessed batches."""
    engines = {
        "paddle": Predictor(work / "exports" / name, use_gpu=False, cpu_threads=threads),
        "onnxruntime": OnnxPredictor(work / "exports" / name, cpu_threads=threads),
    }
    meta = engines["paddle"].meta
    images = [preprocess(read_rgb(p), meta) for p in photos]
    batches = [np.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    best = dict.fromkeys(engines, float("inf"))
    for predictor in engines.values():
        predictor.logits(batches[0])  # warm-up: first-run graph optimisation
    for _ in range(repeat):
        for engine, predictor in engines.items():
            best[engine] = min(best[engine], timed(lambda p=predictor: [p.logits(b) for b in batches]))
    return {engine: len(images) / seconds for engine, seconds in best.items()}


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def agreement(folder_a: Path, folder_b: Path, photos: list[Path]) -> float:
    agree = total = 0
    for photo in photos:
        a, b = read_label_png(folder_a / f"{photo.stem}.png"), read_label_png(folder_b / f"{photo.stem}.png")
        agree += int((a == b).sum())
        total += a.size
    return agree / total


def bench(work: Path, name: str, size: int, photos: list[Path], args) -> dict:
    photo_dir = photos[0].parent
    model, weights = make_model(work, name, size)
    seconds = {"core.predict": [], "paddle": [], "onnxruntime": []}
    for attempt in range(args.repeat):
        core_out = work / f"core_{name}_{size}_{attempt}"
        seconds["core.predict"].append(timed(lambda out=core_out: run_paddleseg(model, weights, photos, size, out)))
        for engine in ENGINES:
            out = work / f"{engine}_{name}_{size}_{attempt}"
            seconds[engine].append(
                timed(lambda e=engine, o=out: run_stage(work, name, e, photo_dir, o, args.batch_size, args.threads))
            )
    rates = {key: len(photos) / min(values) for key, values in seconds.items()}
    model_rates = model_only_rates(work, name, photos, args.batch_size, args.threads, args.repeat)
    masks = {engine: work / f"{engine}_{name}_{size}_0" / name / CLASS_ID_DIR for engine in ENGINES}
    return {
        "rates": rates,
        "model_rates": model_rates,
        "engines_agree": agreement(masks["paddle"], masks["onnxruntime"], photos),
        "core_agrees": agreement(
            work / f"core_{name}_{size}_0" / "pseudo_color_prediction", masks["onnxruntime"], photos
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="generated photos (default 16)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--test-split", action="store_true", help="use data/processed's test photos instead")
    parser.add_argument("--models", nargs="+", default=["unet", "dovenet"], choices=["unet", "dovenet"])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["demo", "512"],
        help="input sides; 'demo': the demo profile's (UNet 80, DoveNet 160)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of both engines (0: one per core)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        work = Path(tmp)
        if args.test_split:
            photos = test_split_photos(work / "photos")
        else:
            photos = demo_like_photos(work / "photos", args.images, args.width, args.height)
        source = "test split" if args.test_split else f"{args.width}x{args.height} JPEG"
        print(
            f"{len(photos)} photos ({source}), 2 classes, random init, batch {args.batch_size}, "
            f"{threads} threads, best of {args.repeat}; img/s (ratio to core.predict)"
        )
        print(
            f"{'model':8} {'size':>5} | {'core.predict':>12} | {'engine=paddle':>18} | {'engine=onnxruntime':>18} "
            f"| {'onnx/paddle':>11} | {'model only: paddle':>18} {'onnxruntime':>11} {'onnx/paddle':>11} "
            f"| masks equal"
        )
        for name in args.models:
            for size_arg in args.sizes:
                size = demo_sizes()[name] if size_arg == "demo" else int(size_arg)
                result = bench(work, name, size, photos, args)
                rates, model_rates = result["rates"], result["model_rates"]
                core = rates["core.predict"]
                print(
                    f"{name:8} {size:5d} | {core:12.2f} | {rates['paddle']:8.2f} ({rates['paddle'] / core:5.2f}x) "
                    f"| {rates['onnxruntime']:8.2f} ({rates['onnxruntime'] / core:5.2f}x) "
                    f"| {rates['onnxruntime'] / rates['paddle']:10.2f}x "
                    f"| {model_rates['paddle']:18.2f} {model_rates['onnxruntime']:11.2f} "
                    f"{model_rates['onnxruntime'] / model_rates['paddle']:10.2f}x "
                    f"| engines {result['engines_agree']:.4%}, core.predict {result['core_agrees']:.2%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
