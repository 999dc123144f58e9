"""Benchmark batch prediction on Spark (python -m batch_segment, docs/scale.md) against stages.predict.

Per photo set, on this machine's cores, each a whole command as a person runs it (start-up, model loading and
writing included), on the same photos and the same served model:
  - `python -m stages.predict` (folder mode, onnxruntime, batch 8; it also draws two pictures per photo);
  - `python -m batch_segment --master local[2]`, and the ratio of its photos/s to predict's (goal >= 0.8x);
  - the same job on a standalone cluster of two one-core workers on 127.0.0.1 (master and workers started
    before the clock runs), against local[2]: that is Spark's overhead, not a speed-up, on one machine;
  - the peak memory of each executor (its JVM plus its Python workers, sampled every 0.2 s), and of the whole
    local[2] application (driver JVM and Python workers);
  - whether every mask equals predict's class_id/ PNG, byte for byte.

    .venv/bin/python bench/spark_batch.py                      # random-init PaddleSeg UNet at the demo's size
    .venv/bin/python bench/spark_batch.py --demo-photos 48 --phone-photos 8
    .venv/bin/python bench/spark_batch.py --tiny-model   # the tests' red-box detector: seconds to build, and
                                                         # at 12 MP the same full-size work per photo (decode,
                                                         # scores resized to the photo, PNG) as the UNet's

Photo sets: the first --demo-photos of data/raw (the bundled demo, JPEGs of about 500 x 375) and --phone-photos
generated 12 MP phone photos (demo_data.multiclass, 4032 x 3024, some stored sideways with an EXIF turn).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(1, str(REPO_ROOT / "tests"))

from demo_data.multiclass import write_multiclass_dataset  # noqa: E402

from mlflow_server import free_port  # noqa: E402
from spark_helpers import stop_marked  # noqa: E402

VENV_BIN = Path(sys.executable).parent
EXECUTOR_CLASS = "CoarseGrainedExecutorBackend"


def bench_serve_module():
    spec = importlib.util.spec_from_file_location("bench_serve", REPO_ROOT / "bench" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model(work: Path, serve) -> Path:
    """tests/tiny_pipeline.py's UNet stand-in (coarse scores resized back bilinearly), deployed with its ONNX
    model, saved as the export stage logs the served model."""
    import mlflow.pyfunc

    from stages.common.config import load_params
    from stages.models.inference_model import read_meta
    from stages.prediction.photo_segmenter import DEPLOY_FILES, ServingLimits, pyfunc_arguments

    from tiny_pipeline import deploy_model, export_model

    export_model(work / "models" / serve.MODEL_NAME, (24, 20), pool=2, upsample=True, architecture="UNet")
    deployed = deploy_model(work / "models" / serve.MODEL_NAME)
    bundle = work / "bundle"
    bundle.mkdir()
    for file in DEPLOY_FILES:
        shutil.copyfile(deployed / file, bundle / file)
    limits = ServingLimits.from_params(load_params([], REPO_ROOT).export.serving)  # params.yaml's, as export's
    mlflow.pyfunc.save_model(str(work / "model"), **pyfunc_arguments(bundle, read_meta(bundle), limits))
    return work / "model"


def environment(marker: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYSPARK_PYTHON", "MLFLOW_TRACKING_URI")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO_ROOT),
        SPARK_LOCAL_IP="127.0.0.1",
        DOVESEG_TEST_MARKER=marker,
    )
    return env


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return seconds


class MemorySampler:
    """Peak RSS (MB) of each process tree rooted at a process whose command line holds ``needle``."""

    def __init__(self, needle: str, under: int | None = None):
        self.needle, self.under, self.peaks = needle, under, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _roots(self):
        candidates = psutil.Process(self.under).children(recursive=True) if self.under else psutil.process_iter()
        for process in candidates:
            with contextlib.suppress(psutil.Error):
                if self.needle in " ".join(process.cmdline()):
                    yield process

    def _run(self):
        while not self._stop.wait(0.2):
            with contextlib.suppress(psutil.Error):
                for root in self._roots():
                    with contextlib.suppress(psutil.Error):
                        tree = [root, *root.children(recursive=True)]
                        rss = sum(p.memory_info().rss for p in tree if p.is_running()) / 1e6
                        self.peaks[root.pid] = max(self.peaks.get(root.pid, 0.0), rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def standalone_cluster(work: Path, env: dict[str, str], marker: str):
    """A master and two one-core workers on 127.0.0.1 (docs/scale.md's block); its spark:// URL."""
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = str(VENV_BIN / "spark-class")
    commands = [[spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port)]]
    worker = ["org.apache.spark.deploy.worker.Worker", "--cores", "1", "--memory", "2g", "--work-dir", str(work)]
    commands += [[spark_class, *worker, url]] * 2
    logs = [open(work.parent / f"cluster-{i}.log", "w") for i in range(3)]  # noqa: SIM115 - closed below
    processes = []
    try:
        for command, log in zip(commands, logs):
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(3 if not processes[1:] else 0)  # the master first
        time.sleep(10)  # the workers register
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        for log in logs:
            log.close()
        left = stop_marked(marker)
        if left:
            print(f"warning: killed processes left by the cluster: {left}", file=sys.stderr)


def in_task_rate(out: Path, slots: int = 2) -> float:
    """Photos per second inside the tasks (the manifest's seconds per photo over ``slots`` parallel tasks): the
    rate once Spark, the Python workers and the model are up, which a large collection approaches."""
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return len(rows) * slots / sum(row["seconds"] for row in rows)


def same_masks(out: Path, predicted: Path) -> str:
    expected = sorted(predicted.rglob("*.png"))
    same = sum((out / "class_id" / p.relative_to(predicted)).read_bytes() == p.read_bytes() for p in expected)
    return f"{same}/{len(expected)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-photos", type=int, default=48)
    parser.add_argument("--phone-photos", type=int, default=8)
    parser.add_argument("--tiny-model", action="store_true", help="the tests' tiny model instead of a UNet")
    args = parser.parse_args()
    serve = bench_serve_module()
    marker = uuid.uuid4().hex
    env = environment(marker)
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        work = Path(tmp)
        model_dir = tiny_model(work, serve) if args.tiny_model else serve.random_unet_model(work)
        if not args.tiny_model:
            serve.deploy_folder(model_dir, work / "exports")
        sets = {}
        demo = work / "demo"
        demo.mkdir()
        for photo in sorted((REPO_ROOT / "data" / "raw").glob("*.jpg"))[: args.demo_photos]:
            shutil.copyfile(photo, demo / photo.name)
        sets["demo photos"] = demo
        phone = work / "phone"
        write_multiclass_dataset(
            phone,
            count=args.phone_photos,
            seed=0,
            size=(4032, 3024),
            classes=4,
            labels_file=work / "l.txt",
            progress=False,
        )
        for label in phone.glob("*.json"):
            label.unlink()
        sets["12 MP photos"] = phone
        print(
            f"{'tiny red-box detector (tests)' if args.tiny_model else 'random-init PaddleSeg UNet (demo input size)'}, "
            f"{os.cpu_count()} CPU cores, "
            f"load average {os.getloadavg()[0]:.1f} at the start; wall time of each whole command"
        )
        print(
            f"{'photos':22} | {'predict photos/s':>16} | {'local[2] photos/s':>17} | {'local[2] / predict':>18} | "
            f"{'cluster photos/s':>16} | {'cluster / local[2]':>18} | {'in tasks, local[2] / cluster':>28} | "
            f"{'peak MB per executor':>20} | masks = predict"
        )
        for name, folder in sets.items():
            count = len(list(folder.glob("*.jpg")))
            predicted_dir = work / f"predicted-{folder.name}"
            predict_s = timed(
                [
                    str(VENV_BIN / "python"),
                    "-m",
                    "stages.predict",
                    f"paths.exports_dir={work / 'exports'}",
                    f"predict.models=[{serve.MODEL_NAME}]",
                    f"predict.input_dir={folder}",
                    f"predict.output_dir={predicted_dir}",
                ],
                env,
                REPO_ROOT,
            )
            predicted = predicted_dir / serve.MODEL_NAME / "class_id"
            batch = [str(VENV_BIN / "python"), "-m", "batch_segment", str(folder), "--model", str(model_dir)]
            local_out = work / f"local-{folder.name}"
            with MemorySampler("SparkSubmit", under=os.getpid()) as local_memory:
                local_s = timed([*batch[:4], str(local_out), *batch[4:], "--master", "local[2]"], env, REPO_ROOT)
            cluster_out = work / f"cluster-{folder.name}"
            with (
                standalone_cluster(work / f"spark-work-{folder.name}", env, marker) as url,
                MemorySampler(EXECUTOR_CLASS) as executors,
            ):
                cluster_s = timed([*batch[:4], str(cluster_out), *batch[4:], "--master", url], env, REPO_ROOT)
            peaks = " / ".join(f"{peak:.0f}" for peak in sorted(executors.peaks.values()))
            app = max(local_memory.peaks.values(), default=0)
            print(
                f"{count:3} {name:18} | {count / predict_s:16.2f} | {count / local_s:17.2f} | "
                f"{predict_s / local_s:17.2f}x | {count / cluster_s:16.2f} | {local_s / cluster_s:17.2f}x | "
                f"{in_task_rate(local_out):12.2f} / {in_task_rate(cluster_out):5.2f} photos/s | {peaks:>20} | local[2] app {app:.0f} MB; {same_masks(local_out, predicted)} local, "
                f"{same_masks(cluster_out, predicted)} cluster"
            )


if __name__ == "__main__":
    main()
