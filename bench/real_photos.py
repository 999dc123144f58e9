"""Phone-sized photos against demo-sized ones: convert_json, both trainers' data path, predict's memory.

    .venv/bin/python bench/real_photos.py                        # 16 photos of 4032x3024, 21 classes
    .venv/bin/python bench/real_photos.py --count 24 --size 4000x3000 --keep /tmp/bench-photos

It builds its inputs with the multi-class generator (demo_data/multiclass.py): ``--count`` photos
at ``--size`` (some EXIF-rotated, as phones store portrait shots) and the same scenes at the demo's size
(``--demo-size``, the bundled demo's photos are 240-480 px), with the same labels file of ``--classes``
classes. Every figure is printed with its ratio to the demo-sized run made in the same process, so a busy
machine hurts both alike. The targets are issue 12's.

- convert_json: photos/s (``convert_json.workers``, default one per core) and data/processed bytes over
  the raw photos' bytes.
- training img/s at the demo profile's params, one process: train_paddle's path (paddle.Model.fit over
  the stage's SegDataset, to_static), and train_paddleseg's (its loop over PaddleSeg's datasets from the
  UNet template). Timed from the end of the first batches (to_static compiles there) to the last, data
  loading included; ``--repeat`` runs of each size, alternating, the best counts. Each photo is decoded
  once, before training (the cache fill, timed apart and shown amortised over the demo profile's run).
  Under ``distributed.nproc: auto`` each of the 2 processes fills its own cache in parallel: per-image
  costs are these.
- predict (its default engine, onnxruntime) on the test split in a fresh process: 8 photos in one batch
  (``predict.batch_size`` 8), a DoveNet
  exported with one score map per class of the labels file (22 with ``--classes 21``), scored against the
  labels; peak RSS (VmHWM) and seconds. Then the same 8 photos as a folder, with that model and with a
  2-class one: the peak does not grow with the classes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from demo_data.multiclass import MAX_CLASSES, parse_size, write_multiclass_dataset  # noqa: E402
from stages import convert_json  # noqa: E402
from stages.common.config import load_params  # noqa: E402
from stages.data.split_lists import format_line, image_file_names  # noqa: E402

WARMUP_BATCHES = 2
TARGETS = {"convert photos/s": 4.0, "processed/raw": 1.5, "training ratio": 0.8, "predict GB": 2.5}


def generate(root: Path, count: int, size: tuple[int, int], classes: int, seed: int) -> Path:
    started = time.perf_counter()
    write_multiclass_dataset(root / "raw", count, seed, size, classes, labels_file=root / "labels.txt", progress=False)
    print(f"  generated {count} photos of {size[0]}x{size[1]} in {time.perf_counter() - started:.1f} s")
    return root


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (convert_json's pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def convert(root: Path, workers: int) -> dict:
    cfg = load_params(
        [
            f"data.raw_dir={root / 'raw'}",
            f"data.labels={root / 'labels.txt'}",
            f"data.processed_dir={root / 'processed'}",
            f"convert_json.workers={workers}",
        ],
        REPO_ROOT,
    )
    cpu = cpu_seconds()
    result = convert_json.run(cfg)
    cpu = cpu_seconds() - cpu
    raw = sum(path.stat().st_size for path in (root / "raw").glob("*.jpg"))
    processed = sum(path.stat().st_size for path in (root / "processed").rglob("*") if path.is_file())
    return {
        "photos/s": result["samples"] / result["seconds"],
        "processed/raw": processed / raw,
        "photos/CPU-s": result["samples"] / cpu,
        "raw MB": raw / 1e6,
        "processed MB": processed / 1e6,
        "workers": result["workers"],
    }


def write_splits(root: Path, val: int, test: int) -> list[str]:
    """All photos train; the first ``val`` validate, the first ``test`` are the test split."""
    manifest = json.loads((root / "processed" / convert_json.MANIFEST_FILE).read_text())
    files = image_file_names(manifest)
    stems = sorted(files)
    splits = root / "splits"
    splits.mkdir(exist_ok=True)
    for name, chosen in (("train", stems), ("val", stems[:val]), ("test", stems[:test])):
        (splits / f"{name}.txt").write_text("".join(format_line(s, " ", files[s]) + "\n" for s in chosen))
    return [
        f"data.labels={root / 'labels.txt'}",
        f"data.processed_dir={root / 'processed'}",
        f"data.splits_dir={splits}",
        f"paths.models_dir={root / 'models'}",
        f"paths.predictions_dir={root / 'predictions'}",
        f"paths.checkpoints_dir={root / 'checkpoints'}",
    ]


def dovenet_throughput(overrides: list[str], epochs: int) -> dict:
    """train_paddle's data path and model (demo params), images per second after the warm-up batches."""
    import paddle

    from stages.data.labels import read_labels
    from stages.data.split_lists import read_split
    from stages.models.dovenet import DoveNet
    from stages.training.dataset import Augment, SegDataset, make_loader
    from stages.training.device import configure_device
    from stages.training.dovenet_fit import build_model
    from stages.training.optimizer import build_optimizer

    cfg = load_params(overrides, REPO_ROOT)
    params = cfg.train_paddle
    on_gpu = configure_device(params)
    labels = read_labels(cfg.data.labels)
    aug = params.augment
    dataset = SegDataset(
        read_split(cfg, "train"),
        int(params.input_size),
        params.mean,
        params.std,
        Augment(int(params.crop_size), tuple(aug.scale_range), float(aug.flip_prob), float(aug.color_jitter)),
        seed=0,
    )
    fill = dataset.fill_cache("training photos")["seconds"]
    loader = make_loader(dataset, int(params.batch_size), train=True, num_workers=int(params.num_workers))
    times, images = [], []

    class Timer(paddle.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            dataset.set_epoch(epoch)
            loader.batch_sampler.sampler.set_epoch(epoch)

        def on_train_batch_end(self, step, logs=None):
            times.append(time.perf_counter())
            images.append(logs["batch_size"])

    with paddle.utils.unique_name.guard():
        net = DoveNet(labels.num_classes)
        model = build_model(net, build_optimizer(params, net.parameters(), 1000), params, labels.num_classes, on_gpu)
        model.fit(loader, epochs=epochs, verbose=0, callbacks=[Timer()])
    timed = sum(images[WARMUP_BATCHES:])
    return {
        "img/s": timed / (times[-1] - times[WARMUP_BATCHES - 1]),
        "fill s": fill,
        "run images": int(params.epochs) * len(dataset),
    }


def unet_throughput(overrides: list[str], iters: int, work: Path) -> dict:
    """train_paddleseg's loop over PaddleSeg's datasets (demo params, UNet template), one process."""
    from stages.data.labels import read_labels
    from stages.training.paddleseg_checkpoint import new_state
    from stages.training.paddleseg_config import build, resolve_config
    from stages.training.paddleseg_loop import LoopSettings, train

    cfg = load_params(overrides, REPO_ROOT)
    params = cfg.train_paddleseg
    labels = read_labels(cfg.data.labels)
    document = resolve_config(
        params.config, cfg, {"labels": {"num_classes": labels.num_classes, "names": list(labels.names)}}
    )
    with contextlib.redirect_stdout(io.StringIO()):  # PaddleSeg prints the whole config
        parts = build(document)
    started = time.perf_counter()
    parts.train_dataset.fill_cache("training photos")
    parts.val_dataset.fill_cache("validation photos")
    fill = time.perf_counter() - started
    stamps = []
    settings = LoopSettings(
        iters=iters,
        batch_size=int(document["batch_size"]),
        eval_interval=iters,
        log_interval=1,
        keep_checkpoint_max=1,
        seed=0,
    )
    train(parts, settings, work, new_state(), on_log=lambda step, values: stamps.append(time.perf_counter()))
    timed = (len(stamps) - WARMUP_BATCHES) * settings.batch_size
    return {
        "img/s": timed / (stamps[-1] - stamps[WARMUP_BATCHES - 1]),
        "fill s": fill,
        "run images": int(params.iters) * settings.batch_size,
    }


PREDICT_CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from stages import predict
from stages.common.config import load_params
cfg = load_params({overrides!r}, {repo!r})
started = time.perf_counter()
predict.run(cfg)
seconds = time.perf_counter() - started
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({{"seconds": seconds, "peak_GB": int(status["VmHWM"].split()[0]) / 2**20}}))
"""


def predict_memory(overrides: list[str], root: Path, classes: int, folder: bool = False) -> dict:
    """predict in a fresh process with a DoveNet of ``classes`` outputs, 8 photos in one batch: the test
    split (scored), or with ``folder`` the same 8 photos as a folder of photos (no labels needed)."""
    from stages.data.labels import read_labels
    from stages.models.dovenet import DoveNet
    from stages.models.inference_model import ModelMeta, export
    from stages.models.onnx_model import ONNX_NAME, convert

    cfg = load_params(overrides, REPO_ROOT)
    names = read_labels(cfg.data.labels).names
    names = names if classes == len(names) else tuple(["_background_"] + [f"class_{i}" for i in range(1, classes)])
    size = int(cfg.train_paddle.input_size)
    models = root / f"models_{classes}"
    export(DoveNet(classes), models / "paddle", ModelMeta((size, size), names, (0.5,) * 3, (0.5,) * 3, "DoveNet"))
    convert(models / "paddle", models / "paddle" / ONNX_NAME, 13, "paddle")  # the folder as export deploys it
    overrides = [
        *overrides,
        f"paths.models_dir={models}",
        f"paths.exports_dir={models}",
        "predict.models=[paddle]",
        "predict.batch_size=8",
        f"paths.predictions_dir={root / f'predictions_{classes}'}",
    ]
    if folder:
        photos = root / "eight_photos"
        photos.mkdir(exist_ok=True)
        for path in sorted((root / "raw").glob("*.jpg"))[:8]:
            shutil.copyfile(path, photos / path.name)
        overrides += [f"predict.input_dir={photos}", f"predict.output_dir={root / f'folder_{classes}'}"]
    child = subprocess.run(
        [sys.executable, "-c", PREDICT_CHILD.format(repo=str(REPO_ROOT), overrides=overrides)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    if child.returncode:
        sys.exit(f"predict failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def line(name: str, phone: float, demo: float, unit: str, target: str = "") -> None:
    print(f"  {name:<44}{phone:>10.2f} {unit:<9}{demo:>10.2f} {unit:<9}{phone / demo:>8.2f}x  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=16, help="photos of each size (at least 8)")
    parser.add_argument("--size", type=parse_size, default=(4032, 3024), help="phone photos, WxH as stored")
    parser.add_argument("--demo-size", type=parse_size, default=(480, 360), help="the demo-sized reference")
    parser.add_argument("--classes", type=int, default=MAX_CLASSES, help="classes in the labels file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="convert_json.workers (0: one per core)")
    parser.add_argument("--epochs", type=int, default=8, help="DoveNet epochs timed over --count photos")
    parser.add_argument("--iters", type=int, default=8, help="UNet iterations timed")
    parser.add_argument("--repeat", type=int, default=2, help="training runs of each size; the best counts")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    if args.count < 8:
        parser.error("--count must be at least 8 (predict's batch of 8)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-real-photos-"))
    sizes = {"phone": args.size, "demo": args.demo_size}
    print(
        f"{args.count} photos of {args.size[0]}x{args.size[1]} vs {args.demo_size[0]}x{args.demo_size[1]}, "
        f"{args.classes} classes; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; in {work}"
    )
    results: dict[str, dict] = {kind: {} for kind in sizes}
    overrides = {}
    try:
        for kind, size in sizes.items():
            root = generate(work / kind, args.count, size, args.classes, args.seed)
            results[kind]["convert"] = convert(root, args.workers)
            overrides[kind] = write_splits(root, val=2, test=8)
        # alternating (phone, demo, demo, phone, ...) so that a busy machine hurts both alike; the best counts
        order = [
            kind for turn in range(args.repeat) for kind in (("phone", "demo") if turn % 2 == 0 else ("demo", "phone"))
        ]
        measures = {
            "dovenet": lambda kind: dovenet_throughput(overrides[kind], args.epochs),
            "unet": lambda kind: unet_throughput(overrides[kind], args.iters, work / kind / "unet"),
        }
        for key, measure in measures.items():
            for kind in order:
                run = measure(kind)
                if run["img/s"] > results[kind].get(key, {"img/s": 0.0})["img/s"]:
                    results[kind][key] = run
        for kind in sizes:
            results[kind]["predict"] = predict_memory(overrides[kind], work / kind, args.classes + 1)
        for classes in (args.classes + 1, 2):
            results["phone"][f"folder_{classes}"] = predict_memory(
                overrides["phone"], work / "phone", classes, folder=True
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    phone, demo = results["phone"], results["demo"]
    print(f"\n  {'':<44}{'phone':>20}{'demo-sized':>20}{'ratio':>9}  target")
    line(
        "convert_json photos/s",
        phone["convert"]["photos/s"],
        demo["convert"]["photos/s"],
        "photos/s",
        f">= {TARGETS['convert photos/s']} photos/s on 2 cores",
    )
    cores = os.cpu_count() or 1
    line(
        f"  photos per CPU-second x {cores} cores (idle machine)",
        phone["convert"]["photos/CPU-s"] * cores,
        demo["convert"]["photos/CPU-s"] * cores,
        "photos/s",
    )
    line(
        "data/processed bytes / raw photo bytes",
        phone["convert"]["processed/raw"],
        demo["convert"]["processed/raw"],
        "x",
        f"<= {TARGETS['processed/raw']}x",
    )
    for key, title in (("dovenet", "train_paddle (DoveNet)"), ("unet", "train_paddleseg (UNet, 1 process)")):
        line(
            f"{title} img/s",
            phone[key]["img/s"],
            demo[key]["img/s"],
            "img/s",
            f">= {TARGETS['training ratio']}x demo-sized",
        )
        amortised = {
            kind: r[key]["run images"] / (r[key]["run images"] / r[key]["img/s"] + r[key]["fill s"])
            for kind, r in results.items()
        }
        line("  incl. the cache fill over a demo-profile run", amortised["phone"], amortised["demo"], "img/s")
        line("  cache fill (once per run)", phone[key]["fill s"], demo[key]["fill s"], "s")
    line(
        f"predict 8 photos, {args.classes + 1} classes: peak RSS",
        phone["predict"]["peak_GB"],
        demo["predict"]["peak_GB"],
        "GB",
        f"<= {TARGETS['predict GB']} GB",
    )
    line("  seconds", phone["predict"]["seconds"], demo["predict"]["seconds"], "s")
    many, two = phone[f"folder_{args.classes + 1}"], phone["folder_2"]
    print(
        f"  predict, folder of the 8 phone photos: peak RSS {many['peak_GB']:.2f} GB with {args.classes + 1} "
        f"classes, {two['peak_GB']:.2f} GB with 2 ({many['peak_GB'] / two['peak_GB']:.2f}x); "
        f"{many['seconds']:.1f} s and {two['seconds']:.1f} s"
    )
    print(
        f"  raw photos: {phone['convert']['raw MB']:.1f} MB vs {demo['convert']['raw MB']:.1f} MB; "
        f"convert_json workers {phone['convert']['workers']}; load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
