"""Benchmark the served model (README: "Serve the champion") against stages.predict on the same photos.

The model is served for real (`mlflow models serve --env-manager local` on 127.0.0.1), one photo per request in
MLflow's JSON, as README's clients send them; the client's wall time per request (base64, JSON, HTTP, decoding
the answer) is the latency. Per photo set it prints: predict's wall time per photo (folder mode, onnxruntime,
batch 8, model loading and its three files per photo included), the pyfunc's in-process time per photo, the
server's latency (median, 90th percentile), requests/s with one client and with two at once, the ratio of the
served latency to predict's time per photo, and how many mask pixels equal predict's.

    .venv/bin/python bench/serve.py            # random-init PaddleSeg UNet at the demo's input size (80)
    .venv/bin/python bench/serve.py --model-uri "models:/doveseg-segmenter@champion"   # after dvc repro

Photo sets: the first --demo-photos of data/raw (the bundled demo, 500 x 375 JPEGs) and --phone-photos
generated 12 MP phone photos (demo_data.multiclass, 4032 x 3024, some stored sideways with an EXIF rotation).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(1, str(REPO_ROOT / "tests"))  # the tests' server helpers

from demo_data.multiclass import write_multiclass_dataset  # noqa: E402
from stages import predict  # noqa: E402
from stages.common.config import load_params  # noqa: E402
from stages.data.images import read_label_png  # noqa: E402
from stages.models.inference_model import read_meta  # noqa: E402
from stages.models.onnx_model import ONNX_NAME  # noqa: E402
from stages.prediction.files import CLASS_ID_DIR  # noqa: E402
from stages.prediction.photo_segmenter import DEPLOY_FILES, pyfunc_arguments  # noqa: E402

from mlflow_server import free_port  # noqa: E402
from model_server import masks, model_server, photos_request, post, serve_command, serving_env  # noqa: E402

MODEL_NAME = "served"


def random_unet_model(work: Path) -> Path:
    """A random-init PaddleSeg UNet (what the demo trains) at the demo's input size (bench/predict.py's), saved
    as the export stage logs the served model. Inference costs the same as a trained one's."""
    import mlflow.pyfunc

    spec = importlib.util.spec_from_file_location("bench_predict", REPO_ROOT / "bench" / "predict.py")
    bench_predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_predict)
    bench_predict.make_model(work, "unet", bench_predict.demo_sizes()["unet"])
    bundle = work / "bundle"
    bundle.mkdir()
    for file in DEPLOY_FILES:
        shutil.copyfile(work / "exports" / "unet" / file, bundle / file)
    mlflow.pyfunc.save_model(str(work / "model"), **pyfunc_arguments(bundle, read_meta(bundle), 50_000_000))
    return work / "model"


def downloaded_model(work: Path, uri: str) -> Path:
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(work / "model")))


def deploy_folder(model_dir: Path, exports_dir: Path) -> None:
    """The served model's ONNX model and meta as an export folder predict reads: the same model, both ways."""
    [bundle] = {path.parent for path in (model_dir / "artifacts").rglob(ONNX_NAME)}
    (exports_dir / MODEL_NAME).mkdir(parents=True)
    for file in DEPLOY_FILES:
        shutil.copyfile(bundle / file, exports_dir / MODEL_NAME / file)


def predict_seconds_per_photo(work: Path, photo_dir: Path, out: Path, count: int) -> float:
    cfg = load_params(
        [
            f"paths.exports_dir={work / 'exports'}",
            f"predict.models=[{MODEL_NAME}]",
            "predict.engine=onnxruntime",
            f"predict.input_dir={photo_dir}",
            f"predict.output_dir={out}",
        ],
        REPO_ROOT,
    )
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        predict.run(cfg)
    return (time.perf_counter() - started) / count


def pyfunc_seconds_per_photo(model_dir: Path, photos: list[Path]) -> float:
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(str(model_dir))
    model.predict(pd.DataFrame({"image": [photos[0].read_bytes()]}))  # warm-up
    started = time.perf_counter()
    for photo in photos:
        model.predict(pd.DataFrame({"image": [photo.read_bytes()]}))
    return (time.perf_counter() - started) / len(photos)


def request(url: str, photo: Path) -> tuple[float, bytes]:
    started = time.perf_counter()
    status, answer = post(url, photos_request([photo.read_bytes()]), timeout_s=600)
    if status != 200:
        raise RuntimeError(f"{photo}: HTTP {status}: {answer}")
    mask = masks(answer)[0]
    return time.perf_counter() - started, mask


def bench_photos(url: str, photos: list[Path], predicted: Path) -> dict:
    request(url, photos[0])  # warm-up
    started = time.perf_counter()
    answers = [request(url, photo) for photo in photos]
    one_client = len(photos) / (time.perf_counter() - started)
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda photo: request(url, photo), photos))
    two_clients = len(photos) / (time.perf_counter() - started)
    latencies = sorted(seconds for seconds, _ in answers)
    agree = total = 0
    for photo, (_, mask) in zip(photos, answers):
        served = np.asarray(Image.open(io.BytesIO(mask)))
        expected = read_label_png(predicted / f"{photo.stem}.png")
        agree += int((served == expected).sum())
        total += expected.size
    return {
        "p50": statistics.median(latencies),
        "p90": latencies[math.ceil(0.9 * len(latencies)) - 1],
        "one_client": one_client,
        "two_clients": two_clients,
        "agreement": agree / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="a served model to bench (default: a random-init UNet, demo size)")
    parser.add_argument("--demo-photos", type=int, default=12)
    parser.add_argument("--phone-photos", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        model_dir = downloaded_model(work, args.model_uri) if args.model_uri else random_unet_model(work)
        deploy_folder(model_dir, work / "exports")
        meta = read_meta(work / "exports" / MODEL_NAME)
        sets = {}
        demo = work / "demo"
        demo.mkdir()
        for photo in sorted((REPO_ROOT / "data" / "raw").glob("*.jpg"))[: args.demo_photos]:
            shutil.copyfile(photo, demo / photo.name)
        sets["demo photo"] = sorted(demo.iterdir())
        phone = work / "phone"
        write_multiclass_dataset(
            phone,
            count=args.phone_photos,
            seed=0,
            size=(4032, 3024),
            classes=4,
            labels_file=work / "labels.txt",
            progress=False,
        )
        sets["12 MP photo"] = sorted(phone.glob("*.jpg"))

        port = free_port()
        label = args.model_uri or f"random-init {meta.architecture}"
        print(
            f"{label}, input {meta.input_size[1]}x{meta.input_size[0]}, {os.cpu_count()} CPU cores; "
            f"`mlflow models serve --env-manager local`, one photo per request"
        )
        print(
            f"{'photos (mean file size)':39} | {'predict s/photo':>15} | {'pyfunc s/photo':>14} | {'served p50 / p90 s':>18} | "
            f"{'req/s 1 client':>14} | {'req/s 2 clients':>15} | {'served / predict':>16} | masks = predict"
        )
        with model_server(serve_command(str(model_dir), port), port, work, serving_env(), work / "serve.log") as url:
            for name, photos in sets.items():
                width, height = max(Image.open(photo).size for photo in photos)
                out = work / f"predicted_{photos[0].parent.name}"
                predict_s = predict_seconds_per_photo(work, photos[0].parent, out, len(photos))
                predicted = out / MODEL_NAME / CLASS_ID_DIR
                pyfunc_s = pyfunc_seconds_per_photo(model_dir, photos)
                served = bench_photos(url, photos, predicted)
                size_kb = sum(photo.stat().st_size for photo in photos) / len(photos) / 1e3
                print(
                    f"{f'{len(photos)} x {name}, to {width}x{height}':30} {size_kb:5.0f} KB | {predict_s:15.3f} | "
                    f"{pyfunc_s:14.3f} | {served['p50']:8.3f} / {served['p90']:7.3f} | "
                    f"{served['one_client']:14.2f} | {served['two_clients']:15.2f} | "
                    f"{served['p50'] / predict_s:15.2f}x | {served['agreement']:.4%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
