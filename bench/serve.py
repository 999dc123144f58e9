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

With --memory it measures instead the server's peak memory (the resident set of its process tree, `mlflow
models serve` and its uvicorn, sampled every 10 ms) under the largest request the served model's limits allow
(read from its metadata): max_rows photos, max_request_bytes of files, as large a photo as max_image_pixels and
max_request_pixels allow, as a JPEG and as a float TIFF (the costliest to decode). It prints each peak and its
ratio to the budget (2.5 GB on 2 cores), beside the idle server's and one demo photo's; then what bodies over
max_request_bytes cost before their 400 (MLflow parses a whole body before the model can refuse it).
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
import threading
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
from stages.prediction.photo_segmenter import DEPLOY_FILES, LIMIT_NAMES, ServingLimits, pyfunc_arguments  # noqa: E402

from mlflow_server import free_port  # noqa: E402
from model_server import masks, model_server, photos_request, post, serve_command, server_process, serving_env  # noqa: E402

MODEL_NAME = "served"
BUDGET_BYTES = 2_500_000_000  # the server's resident memory under the largest request the limits allow


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
    limits = ServingLimits.from_params(load_params([], REPO_ROOT).export.serving)  # params.yaml's, as export's
    mlflow.pyfunc.save_model(str(work / "model"), **pyfunc_arguments(bundle, read_meta(bundle), limits))
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


def photo_file(width: int, height: int, kind: str, size: int = 0) -> bytes:
    """A photo file of width x height, padded to ``size`` bytes with trailing zeros (which decoders ignore)."""
    buffer = io.BytesIO()
    if kind == "float TIFF":  # mode F: to_rgb scales it in float64, the costliest photo to decode
        Image.new("F", (width, height), 0.5).save(buffer, "TIFF", compression="tiff_deflate")
    else:
        Image.new("RGB", (width, height), (90, 140, 60)).save(buffer, kind, quality=90)
    return buffer.getvalue() + bytes(max(0, size - buffer.tell()))


def largest_request(limits: ServingLimits, kind: str) -> tuple[list[bytes], str]:
    """max_rows photos: as many of max_image_pixels as max_request_pixels holds (one at least), 8 x 8 JPEGs for
    the other rows, the large ones padded so the files' bytes total max_request_bytes; and what it holds."""
    small = photo_file(8, 8, "JPEG")
    count = max(1, min(limits.max_rows, limits.max_request_pixels // limits.max_image_pixels))
    rest = limits.max_rows - count
    pixels = min(limits.max_image_pixels, (limits.max_request_pixels - 64 * rest) // count)
    height = math.isqrt(pixels * 3 // 4)
    big = photo_file(pixels // height, height, kind, (limits.max_request_bytes - rest * len(small)) // count)
    photos = [big] * count + [small] * rest
    return photos, f"{count} x {pixels // height}x{height} {kind} + {rest} x 8x8, {sum(map(len, photos)) / 1e6:.0f} MB"


class PeakMemory:
    """While in use, the resident memory of a process tree sampled every 10 ms (``peak``), and the sum of its
    processes' own peaks (the kernel's VmHWM, reset on entry): an upper bound, a check on the sampling."""

    def __init__(self, root_pid: int):
        import psutil

        self.root, self.peak, self._done = psutil.Process(root_pid), 0, threading.Event()

    def processes(self) -> list:
        return [self.root, *self.root.children(recursive=True)]

    def resident(self) -> int:
        return sum(process.memory_info().rss for process in self.processes())

    def kernel_peak(self) -> int:
        status = [Path(f"/proc/{process.pid}/status").read_text() for process in self.processes()]
        return sum(int(text.split("VmHWM:")[1].split()[0]) * 1024 for text in status)

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, self.resident())

    def __enter__(self) -> PeakMemory:
        for process in self.processes():
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # 5: reset the peak to the current RSS
        self.peak, self._thread = self.resident(), threading.Thread(target=self._sample)
        self._done.clear()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


MEMORY_ROW = "{:66} | {:>7} | {:>6} | {:>6} | {:>7} | {:>12} | {:>8} | {:>8}"


def bench_memory(url: str, memory: PeakMemory, limits: ServingLimits, repeats: int) -> None:
    print(MEMORY_ROW.format("request", "body MB", "status", "s", "peak MB", "VmHWM sum MB", "after MB", "/ budget"))
    print(MEMORY_ROW.format("idle server", "", "", "", f"{memory.resident() / 1e6:.0f}", "", "", ""))
    requests = [("1 demo photo (reference)", [sorted((REPO_ROOT / "data" / "raw").glob("*.jpg"))[0].read_bytes()])]
    for kind in ("JPEG", "float TIFF"):
        photos, what = largest_request(limits, kind)
        requests += [(f"largest allowed: {what}", photos)] * repeats
    photos, _ = largest_request(limits, "JPEG")
    requests.append(("max_request_bytes + 1 (a 400 once MLflow has parsed it)", [*photos[:-1], photos[-1] + b"\0"]))
    requests.append(("4 x max_request_bytes (a 400 once MLflow has parsed it)", [photos[0] * 4, *photos[1:]]))
    for label, photos in requests:
        body = photos_request(photos)
        body_mb = sum(len(row[0]) for row in body["dataframe_split"]["data"]) / 1e6
        with memory:
            started = time.perf_counter()
            status, answer = post(url, body, timeout_s=600)
            seconds = time.perf_counter() - started
        refused = "max_request_bytes" in label  # and its 400 must name that limit
        if status != (400 if refused else 200) or refused != ("max_request_bytes" in str(answer)):
            raise RuntimeError(f"{label}: HTTP {status}: {str(answer)[-500:]}")
        figures = [f"{mb / 1e6:.0f}" for mb in (memory.peak, memory.kernel_peak(), memory.resident())]
        ratio = f"{memory.peak / BUDGET_BYTES:.2f}"
        print(MEMORY_ROW.format(label, f"{body_mb:.1f}", status, f"{seconds:.1f}", *figures, ratio), flush=True)


def main_memory(args) -> None:
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        model_dir = downloaded_model(work, args.model_uri) if args.model_uri else random_unet_model(work)
        metadata = Model.load(str(model_dir / "MLmodel")).metadata  # the limits the model was exported with
        limits = ServingLimits(**{name: int(metadata[name]) for name in LIMIT_NAMES})
        print(
            f"{args.model_uri or 'random-init UNet'}, {os.cpu_count()} CPU cores, `mlflow models serve --env-manager "
            f"local`; budget {BUDGET_BYTES / 1e6:,.0f} MB resident; limits (the model's): "
            + ", ".join(f"{name} {getattr(limits, name):,}" for name in LIMIT_NAMES)
        )
        port = free_port()
        command = serve_command(str(model_dir), port)
        with server_process(command, port, work, serving_env(), work / "serve.log") as (url, process):
            bench_memory(url, PeakMemory(process.pid), limits, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="a served model to bench (default: a random-init UNet, demo size)")
    parser.add_argument("--demo-photos", type=int, default=12)
    parser.add_argument("--phone-photos", type=int, default=4)
    parser.add_argument("--memory", action="store_true", help="the peak memory under the largest request instead")
    parser.add_argument("--repeats", type=int, default=2, help="--memory: each largest request, this many times")
    args = parser.parse_args()
    if args.memory:
        main_memory(args)
        return

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
