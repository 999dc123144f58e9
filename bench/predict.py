"""Benchmark the predict stage's batched inference against PaddleSeg's own paddleseg.core.predict.

Both predict the same photos with the same random-init PaddleSeg UNet (2 classes): PaddleSeg from the
weights saved as a state dict (dygraph, one photo at a time), the stage from the same weights exported
with stages.models.inference_model.export (Paddle Inference, batched). Both resize to the model's input size,
normalise with mean = std = 0.5, resize the scores back bilinearly, take the argmax, and write a
pseudo-colour PNG and an overlay per photo (the stage also writes the class-id PNG). Times are wall
clock of the whole call, model loading included; each side runs --repeat times, the best counts.

    .venv/bin/python bench/predict.py                   # 20 generated 640x480 JPEG photos, 128x128 input
    .venv/bin/python bench/predict.py --images 40 --size 224 --batch-size 8
    .venv/bin/python bench/predict.py --test-split      # data/processed's test photos (after build_splits)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from stages import predict  # noqa: E402
from stages.prediction.files import CLASS_ID_DIR  # noqa: E402
from stages.common.config import load_params  # noqa: E402
from stages.data.images import read_label_png  # noqa: E402
from stages.data.split_lists import read_split  # noqa: E402
from stages.models.inference_model import ModelMeta, export  # noqa: E402

MEAN = STD = (0.5, 0.5, 0.5)


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


def make_unet(work: Path, size: int):
    """A random-init PaddleSeg UNet: its state dict for core.predict, and its export for the stage."""
    import paddle
    from paddleseg.models import UNet

    class FirstLogit(paddle.nn.Layer):
        """PaddleSeg models return a list of logits; inference wants the first (the final one)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)[0]

    paddle.seed(0)
    model = UNet(num_classes=2)
    model.eval()
    weights = work / "unet.pdparams"
    paddle.save(model.state_dict(), str(weights))
    export(FirstLogit(model), work / "models" / "unet",
           ModelMeta((size, size), ("_background_", "dove"), MEAN, STD, "UNet"))
    return model, weights


def run_paddleseg(model, weights: Path, photos: list[Path], size: int, out: Path) -> None:
    from paddleseg.core import predict as paddleseg_predict
    from paddleseg.transforms import Compose, Normalize, Resize

    transforms = Compose([Resize(target_size=(size, size)), Normalize(mean=MEAN, std=STD)])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        paddleseg_predict(model, model_path=str(weights), transforms=transforms,
                          image_list=[str(p) for p in photos], image_dir=str(photos[0].parent), save_dir=str(out))


def run_stage(work: Path, photo_dir: Path, out: Path, batch_size: int, threads: int) -> dict:
    cfg = load_params([f"paths.models_dir={work / 'models'}", "predict.models=[unet]",
                       f"predict.input_dir={photo_dir}", f"predict.output_dir={out}",
                       f"predict.batch_size={batch_size}", f"predict.cpu_threads={threads}"], REPO_ROOT)
    return predict.run(cfg)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="generated photos (default 20)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--test-split", action="store_true", help="use data/processed's test photos instead")
    parser.add_argument("--size", type=int, default=128, help="model input side (default 128, the demo's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="stage's CPU threads (0: one per core)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        work = Path(tmp)
        photo_dir = work / "photos"
        if args.test_split:
            photos = test_split_photos(photo_dir)
        else:
            photos = demo_like_photos(photo_dir, args.images, args.width, args.height)
        model, weights = make_unet(work, args.size)

        reference, ours = [], []
        for attempt in range(args.repeat):  # interleaved, so load from other work hits both alike
            reference.append(timed(lambda: run_paddleseg(model, weights, photos, args.size,
                                                         work / f"paddleseg_{attempt}")))
            ours.append(timed(lambda: run_stage(work, photo_dir, work / f"stage_{attempt}",
                                                args.batch_size, args.threads)))

        # Same weights, same photos: how many pixels get the same class?
        agree = total = 0
        for photo in photos:
            theirs = read_label_png(work / "paddleseg_0" / "pseudo_color_prediction" / f"{photo.stem}.png")
            mine = read_label_png(work / "stage_0" / "unet" / CLASS_ID_DIR / f"{photo.stem}.png")
            agree += int((theirs == mine).sum())
            total += mine.size

    count = len(photos)
    reference_rate, stage_rate = count / min(reference), count / min(ours)
    print(f"{count} photos ({'test split' if args.test_split else f'{args.width}x{args.height} JPEG'}), "
          f"UNet 2 classes at {args.size}x{args.size}, best of {args.repeat}")
    print(f"paddleseg.core.predict (dygraph, 1 photo/step): {min(reference):7.2f} s  {reference_rate:6.2f} img/s")
    print(f"stages.predict (Paddle Inference, batch {args.batch_size}):   {min(ours):7.2f} s  {stage_rate:6.2f} img/s")
    print(f"ratio: {stage_rate / reference_rate:.2f}x")
    print(f"masks agreeing pixel for pixel: {agree / total:.2%}")


if __name__ == "__main__":
    main()
