"""Benchmark train_paddleseg's training path against PaddleSeg's own paddleseg.core.train, same config.

Both build their model, datasets, loss and optimizer from the same resolved PaddleSeg config (the stage's
template filled from params.yaml), with the same seed, and train the same number of iterations with one
validation and one checkpoint at the end (core.train: save_interval = iters). core.train runs with the
fixes of stages.training.paddleseg_compat, without which it cannot run at all on Paddle 3, in one process (as
PaddleSeg's train.py runs on a CPU machine). The stage's loop runs in one process, and with
``train_paddleseg.distributed.nproc`` > 1 also data parallel under Paddle's launcher, as the stage does
then (each process trains its share of every global batch, one CPU thread each on a 2-core machine).

Figures: training images per wall-clock second of the training call (building the parts is not timed),
and per CPU second. Runs alternate (stage, PaddleSeg, PaddleSeg, stage, ...) so a busy machine hurts
both alike; the best of the repeats counts.

    .venv/bin/python bench/train_paddleseg_throughput.py                   # demo data and params
    .venv/bin/python bench/train_paddleseg_throughput.py --iters 40 --repeat 3 train_paddleseg.batch_size=4

Measured 2026-11-25, 2 cores, nothing else running, demo params (64x64, batch 4, UNet), 20 iters, best of 2:
stage 2.501 img/s, paddleseg.core.train 2.488 img/s: ratio 1.005 (per CPU-second 1.265 vs 1.293). The two
run the same PaddleSeg model, loss and optimizer, so parity is expected; the run-to-run spread (2.24-2.50 img/s)
is larger than the difference. Tried: 1 math thread 2.04 vs 2 threads 2.22 img/s (kept 2: unlike DoveNet's
to_static path, dygraph runs one op at a time); to_static_training: 1.99 img/s, no gain.
Same day, 20 iters of batch 4 with train_paddleseg.distributed.nproc=2 (2 processes x 1 thread): stage 2.315,
paddleseg.core.train 2.346, stage in 2 processes 3.233 img/s: ratio 1.378, on 42.8 CPU-s instead of 68.5. The
demo profile therefore trains in 2 processes (nproc: auto); with its batch of 8 (4 per process) the stage ran at
4.4 img/s in `dvc repro`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import paddle  # noqa: E402

from stages.common.config import load_params  # noqa: E402
from stages.data.labels import read_labels  # noqa: E402
from stages.training import distributed, launcher  # noqa: E402
from stages.training.paddleseg_checkpoint import new_state  # noqa: E402
from stages.training.paddleseg_config import build, resolve_config  # noqa: E402
from stages.training.paddleseg_loop import LoopSettings, seed_everything, train  # noqa: E402

STAGE, PADDLESEG = "stage", "paddleseg.core.train"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_path(parts, document: dict, iters: int, seed: int, work: Path) -> None:
    settings = LoopSettings(
        iters=iters,
        batch_size=int(document["batch_size"]),
        eval_interval=iters,
        log_interval=max(1, iters // 2),
        keep_checkpoint_max=1,
        seed=seed,
    )
    train(parts, settings, work / "stage", new_state(), on_log=lambda step, values: None)


def paddleseg_path(parts, document: dict, iters: int, seed: int, work: Path) -> None:
    from paddleseg.core import train as paddleseg_train  # patched by stages.training.paddleseg_compat on import above

    paddleseg_train(
        parts.model,
        parts.train_dataset,
        val_dataset=parts.val_dataset,
        optimizer=parts.optimizer,
        save_dir=str(work / "paddleseg"),
        iters=iters,
        batch_size=int(document["batch_size"]),
        save_interval=iters,
        log_iters=max(1, iters // 2),
        losses=parts.losses,
        keep_checkpoint_max=1,
    )


def timed(function, document: dict, iters: int, seed: int, work: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one training call on freshly built parts, its console chatter swallowed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        seed_everything(seed)
        parts = build(document)  # not timed: the same for both
        distributed.barrier()
        wall, cpu = time.perf_counter(), cpu_seconds()
        function(parts, document, iters, seed, work)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def resolved_document(overrides: list[str], iters: int) -> tuple[dict, object]:
    cfg = load_params(overrides, REPO_ROOT)
    labels = read_labels(cfg.data.labels)
    document = resolve_config(
        cfg.train_paddleseg.config, cfg, {"labels": {"num_classes": labels.num_classes, "names": list(labels.names)}}
    )
    document["iters"] = iters
    return document, cfg


def data_parallel_run(args, nproc: int, work: Path) -> tuple[float, float]:
    """The stage's loop in ``nproc`` processes under Paddle's launcher: (rank 0's wall s, CPU s of all)."""
    results = work / "dp-results"
    results.mkdir(parents=True, exist_ok=True)
    command = launcher.launch_command("-", nproc, log_dir=str(work / "dp-logs"))
    # launch_command ends with `python -u -m <module>`: this script in worker mode instead
    command = command[: command.index("-u") + 1] + [
        str(Path(__file__).resolve()),
        "--worker",
        str(results),
        "--iters",
        str(args.iters),
        *args.overrides,
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"data-parallel run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    runs = [json.loads(path.read_text()) for path in sorted(results.glob("rank*.json"))]
    return runs[0]["wall"], sum(run["cpu"] for run in runs)


def worker(args) -> None:
    """One process of data_parallel_run (started by Paddle's launcher)."""
    paddle.base.core.set_num_threads(distributed.cpu_threads(0))
    document, cfg = resolved_document(args.overrides, args.iters)
    with tempfile.TemporaryDirectory(prefix="bench-paddleseg-dp-") as folder:
        wall, cpu = timed(stage_path, document, args.iters, int(cfg.seed), Path(folder))
    Path(args.worker, f"rank{distributed.rank()}.json").write_text(json.dumps({"wall": wall, "cpu": cpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20, help="training iterations per run")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path (best counts)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="params overrides, e.g. train_paddleseg.batch_size=4")
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    document, cfg = resolved_document(args.overrides, args.iters)
    nproc = launcher.launch_settings(cfg.train_paddleseg.get("distributed"), "train_paddleseg.distributed").nproc
    paddle.base.core.set_num_threads(distributed.cpu_threads(int(cfg.train_paddleseg.num_threads)))
    batch, seed = int(document["batch_size"]), int(cfg.seed)
    paths = {STAGE: stage_path, PADDLESEG: paddleseg_path}
    names = [STAGE, PADDLESEG] + ([f"stage, {nproc} processes"] if nproc > 1 else [])
    results = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-paddleseg-") as folder:
        for round_number in range(args.repeat):
            for name in names if round_number % 2 == 0 else names[::-1]:
                work = Path(folder) / f"{name}-{round_number}".replace(" ", "_").replace(",", "")
                if name in paths:
                    wall, cpu = timed(paths[name], document, args.iters, seed, work)
                else:
                    wall, cpu = data_parallel_run(args, nproc, work)
                results[name].append((wall, cpu))
                print(
                    f"{name:24s} run {round_number + 1}: {args.iters * batch / wall:6.3f} img/s "
                    f"({wall:.1f} s wall, {cpu:.1f} s CPU)",
                    flush=True,
                )

    best = {name: min(runs) for name, runs in results.items()}
    reference = best[PADDLESEG][0]
    summary = {
        "iters": args.iters,
        "batch_size": batch,
        "crop_size": int(cfg.train_paddleseg.crop_size),
        "input_size": int(cfg.train_paddleseg.input_size),
        "model": document["model"]["type"],
        "device": str(paddle.get_device()),
        "cores": os.cpu_count(),
        **{f"{name} img/s": round(args.iters * batch / wall, 3) for name, (wall, _) in best.items()},
        **{
            f"{name} img/CPU-s": round(args.iters * batch / min(cpu for _, cpu in results[name]), 3) for name in results
        },
        **{f"ratio ({name} / {PADDLESEG})": round(reference / best[name][0], 3) for name in names if name != PADDLESEG},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
