"""Benchmark train_paddleseg's training path against PaddleSeg's own paddleseg.core.train, same config.

Both build their model, datasets, loss and optimizer from the same resolved PaddleSeg config (the stage's
template filled from params.yaml), with the same seed, and train the same number of iterations with one
validation and one checkpoint at the end (core.train: save_interval = iters). core.train runs with the
three fixes of stages.paddleseg_compat, without which it cannot run at all on Paddle 3. Figures are
training images per wall-clock second of the whole call, and per CPU second; the runs alternate
(stage, PaddleSeg, PaddleSeg, stage, ...) so a busy machine hurts both alike. The best of the repeats counts.

    .venv/bin/python bench/train_paddleseg_throughput.py                  # the demo data, demo params
    .venv/bin/python bench/train_paddleseg_throughput.py --iters 20 --repeat 2 train_paddleseg.crop_size=64
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import paddle  # noqa: E402

from stages.config import load_params  # noqa: E402
from stages.labels import read_labels  # noqa: E402
from stages.paddleseg_training import LoopSettings, build, new_state, resolve_config, seed_everything, train  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_path(parts, document: dict, iters: int, seed: int, work: Path) -> None:
    settings = LoopSettings(iters=iters, batch_size=int(document["batch_size"]), eval_interval=iters,
                            log_interval=max(1, iters // 2), keep_checkpoint_max=1, seed=seed)
    train(parts, settings, work / "stage", new_state(), on_log=lambda step, values: None)


def paddleseg_path(parts, document: dict, iters: int, seed: int, work: Path) -> None:
    from paddleseg.core import train as paddleseg_train  # patched by stages.paddleseg_compat on import above

    paddleseg_train(parts.model, parts.train_dataset, val_dataset=parts.val_dataset, optimizer=parts.optimizer,
                    save_dir=str(work / "paddleseg"), iters=iters, batch_size=int(document["batch_size"]),
                    save_interval=iters, log_iters=max(1, iters // 2), losses=parts.losses, keep_checkpoint_max=1)


def timed(function, document: dict, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one training call on freshly built parts, its console chatter swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        seed_everything(args[1])
        parts = build(document)  # not timed: the same for both
        wall, cpu = time.perf_counter(), cpu_seconds()
        function(parts, document, *args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20, help="training iterations per run")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path (best counts)")
    parser.add_argument("--threads", type=int, default=0, help="CPU math threads (0: all cores)")
    parser.add_argument("overrides", nargs="*", help="params overrides, e.g. train_paddleseg.batch_size=2")
    args = parser.parse_args()

    cfg = load_params(args.overrides, REPO_ROOT)
    labels = read_labels(cfg.data.labels)
    document = resolve_config(cfg.train_paddleseg.config, cfg, {"labels": {"num_classes": labels.num_classes,
                                                                          "names": list(labels.names)}})
    document["iters"] = args.iters
    if args.threads:
        paddle.base.core.set_num_threads(args.threads)
    batch = int(document["batch_size"])
    seed = int(cfg.seed)
    paths = {"stage": stage_path, "paddleseg.core.train": paddleseg_path}
    results = {name: [] for name in paths}
    order = ["stage", "paddleseg.core.train"]
    with tempfile.TemporaryDirectory(prefix="bench-paddleseg-") as folder:
        for round_number in range(args.repeat):
            for name in order if round_number % 2 == 0 else order[::-1]:
                work = Path(folder) / f"{name}-{round_number}"
                wall, cpu = timed(paths[name], document, args.iters, seed, work)
                results[name].append((wall, cpu))
                print(f"{name:22s} run {round_number + 1}: {args.iters * batch / wall:6.3f} img/s "
                      f"({wall:.1f} s wall, {cpu:.1f} s CPU)", flush=True)

    best = {name: min(runs) for name, runs in results.items()}
    summary = {
        "iters": args.iters, "batch_size": batch,
        "crop_size": int(cfg.train_paddleseg.crop_size), "input_size": int(cfg.train_paddleseg.input_size),
        "model": document["model"]["type"], "device": str(paddle.get_device()),
        **{f"{name} img/s": round(args.iters * batch / wall, 3) for name, (wall, _) in best.items()},
        **{f"{name} img/CPU-s": round(args.iters * batch / min(cpu for _, cpu in results[name]), 3)
           for name in results},
        "ratio (stage / paddleseg.core.train)": round(best["paddleseg.core.train"][0] / best["stage"][0], 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
