"""Training throughput of DoveNet: the stage's own path vs a bare Paddle dygraph loop.

    .venv/bin/python bench/train_throughput.py [--size 128] [--batch 8] [--batches 8] [key=value ...]

"Stage path" is what train_paddle runs: stages.training.dovenet_fit.build_model (paddle.Model.prepare, to_static
on CPU, the CrossEntropy loss and the confusion-matrix metric) fed by the stage's SegDataset/DataLoader
with augmentation over PNG files (the demo's processed data when present, else synthetic photos in a
temp dir). "Bare dygraph" is forward/backward/step on fixed tensors in a Python loop, as the reference
figures were measured. Both skip their first batches (to_static compiles there). Extra key=value
arguments override params.yaml (e.g. train_paddle.to_static=false train_paddle.num_threads=1).

References on this 2-core machine: bare Paddle 3.3.1 dygraph ~4 img/s at 128x128, batch 8; the same net in
PyTorch ~16 img/s. The machine is shared: the CPU-time column (images per CPU-second of this process)
is less sensitive to other people's jobs than wall time; the load average is printed too.

Measured 2026-11-25 on this 2-core machine with nothing else running (load 0.7), 128x128, batch 8:
  defaults (to_static, num_threads 0 -> 1 math thread)  stage 5.85 img/s, bare dygraph 4.14 img/s  (1.41x wall)
  train_paddle.num_threads=2                            stage 4.80 img/s, bare dygraph 2.32 img/s  (2.07x wall)
  against the references: 1.46x Paddle dygraph (4 img/s), 0.37x PyTorch (16 img/s).
  The static executor runs independent ops on two threads itself; two math threads on top oversubscribe
  the cores (a 6-minute demo run spent 223 s in the kernel with 2 math threads, 15 s with 1), hence the
  default of half the cores under to_static (stages.training.device.math_threads). FLAGS_new_executor_serial_run=1
  brings the stage down to the bare loop's speed: that parallelism is to_static's gain on CPU.
  Earlier, on the machine loaded by 5-10 other jobs: 2 threads stage 2.32 vs bare 1.21 img/s (1.92x).
Tried and not adopted: oneDNN (FLAGS_use_mkldnn) breaks to_static training in Paddle 3.3.1
("ConvertPirAttribute2RuntimeAttribute not support ArrayAttribute<DoubleAttribute>", the upsample op);
NHWC layout: ~10% more img/CPU-s (4.5 vs 4.1) but needs a second layout through model, data and export;
DataLoader workers: num_workers=1 gave the same rate (decoding + augmenting costs ~6 ms/image vs ~250 ms
of training compute per image), so 0 is the default.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paddle

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common.config import StageError, load_params
from stages.data.images import save_label_png, save_rgb_png
from stages.data.split_lists import Sample, read_split
from stages.models.dovenet import DoveNet
from stages.training.dataset import Augment, SegDataset, make_loader
from stages.training.device import configure_device, math_threads
from stages.training.dovenet_fit import build_model
from stages.training.optimizer import build_optimizer

REFERENCE_PADDLE, REFERENCE_TORCH = 4.0, 16.0
WARMUP_BATCHES = 2


def synthetic_samples(root: Path, count: int):
    """Photo-sized PNGs with an elliptic "dove", as Sample objects."""
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        height, width = rng.integers(240, 480, size=2)
        yy, xx = np.mgrid[:height, :width]
        cy, cx, ry, rx = height / 2, width / 2, height / 5, width / 4
        label = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1).astype(np.uint8)
        rgb = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        rgb[label == 1] = (200, 200, 210)
        folder = root / f"s{index:03d}"
        folder.mkdir(parents=True)
        save_rgb_png(folder / "img.png", rgb)
        save_label_png(folder / "label.png", label)
        samples.append(Sample(folder.name, folder / "img.png", folder / "label.png"))
    return samples


class BatchTimer(paddle.callbacks.Callback):
    """Times train batches after the warm-up ones (to_static compiles in the first)."""

    def __init__(self):
        super().__init__()
        self.images, self.start, self.cpu_start = 0, None, None

    def on_train_batch_begin(self, step, logs=None):
        if step == WARMUP_BATCHES:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, step, logs=None):
        if self.start is not None:
            self.images += logs["batch_size"]

    def rates(self) -> tuple[float, float]:
        return (self.images / (time.perf_counter() - self.start), self.images / (time.process_time() - self.cpu_start))


def stage_path(cfg, samples, batches: int) -> tuple[float, float]:
    params = cfg.train_paddle
    size, batch = int(params.input_size), int(params.batch_size)
    augment = Augment(int(params.crop_size), tuple(params.augment.scale_range))
    dataset = SegDataset(samples, size, params.mean, params.std, augment, seed=0)
    loader = make_loader(
        dataset, batch, train=True, num_workers=int(params.num_workers), max_samples=(batches + WARMUP_BATCHES) * batch
    )
    with paddle.utils.unique_name.guard():
        net = DoveNet(2)
        model = build_model(net, build_optimizer(params, net.parameters(), 1000), params, 2, on_gpu=False)
        timer = BatchTimer()
        model.fit(loader, epochs=1, verbose=0, callbacks=[timer])
    return timer.rates()


def bare_dygraph(size: int, batch: int, batches: int) -> tuple[float, float]:
    net = DoveNet(2)
    optimizer = paddle.optimizer.Adam(1e-3, parameters=net.parameters())
    loss_fn = paddle.nn.CrossEntropyLoss(axis=1)
    images = paddle.randn([batch, 3, size, size])
    labels = paddle.randint(0, 2, [batch, 1, size, size])
    for step in range(WARMUP_BATCHES + batches):
        if step == WARMUP_BATCHES:
            start, cpu_start = time.perf_counter(), time.process_time()
        loss = loss_fn(net(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        float(loss)
    done = batches * batch
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="training image side (the references: 128)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: params)")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per path")
    parser.add_argument("overrides", nargs="*", help="params overrides, key=value")
    args = parser.parse_args()

    # Both paths train on size x size images: the stage's crops are set to that size.
    overrides = [f"train_paddle.input_size={args.size}", f"train_paddle.crop_size={args.size}", *args.overrides]
    if args.batch:
        overrides.append(f"train_paddle.batch_size={args.batch}")
    cfg = load_params(overrides)
    params = cfg.train_paddle
    on_gpu = configure_device(params)
    needed = (args.batches + WARMUP_BATCHES) * int(params.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            samples = read_split(cfg, "train")
            source = f"{cfg.data.splits_dir}/train.txt"
        except StageError:  # no processed data yet: synthetic photos will do
            samples, source = synthetic_samples(Path(tmp), min(needed, 24)), "synthetic photos"
        samples = (samples * (needed // len(samples) + 1))[:needed]

        stage_wall, stage_cpu = stage_path(cfg, samples, args.batches)
        bare_wall, bare_cpu = bare_dygraph(int(params.input_size), int(params.batch_size), args.batches)

    threads = math_threads(params)
    print(
        f"DoveNet training at {params.input_size}x{params.input_size}, batch {params.batch_size}, "
        f"{'GPU' if on_gpu else f'CPU, {threads} thread(s)'}, to_static={params.to_static}, "
        f"num_workers={params.num_workers}; data: {source}; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'path':<34}{'img/s (wall)':>14}{'img/CPU-s':>12}")
    print(f"{'stage (paddle.Model.fit + data)':<34}{stage_wall:>14.2f}{stage_cpu:>12.2f}")
    print(f"{'bare dygraph loop':<34}{bare_wall:>14.2f}{bare_cpu:>12.2f}")
    print(f"stage / bare dygraph: {stage_wall / bare_wall:.2f}x (wall), {stage_cpu / bare_cpu:.2f}x (CPU)")
    print(
        f"stage vs references: {stage_wall / REFERENCE_PADDLE:.2f}x Paddle dygraph ({REFERENCE_PADDLE:g} img/s), "
        f"{stage_wall / REFERENCE_TORCH:.2f}x PyTorch ({REFERENCE_TORCH:g} img/s)"
    )


if __name__ == "__main__":
    main()
