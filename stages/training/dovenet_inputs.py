"""What a train_paddle run is made from, checked before anything starts: its params, fitted to the data
(stages.training.adaptation), and their fingerprint with the data and the code (stages.training.fingerprint),
which a checkpoint must match to be resumed."""

from __future__ import annotations

from omegaconf import DictConfig

import stages.models.dovenet
import stages.training.dataset
import stages.training.photo_cache
from stages.common.config import StageError
from stages.data.split_lists import read_split
from stages.training.adaptation import Adaptation, adapted_config, fit_batch, fit_processes
from stages.training.fingerprint import inputs_fingerprint
from stages.training.launcher import LaunchSettings
from stages.training.optimizer import LR_SCHEDULES, OPTIMIZERS

STAGE = "train_paddle"
# Params that change how fast training runs, not what it computes: a checkpoint stays valid across them.
RUNTIME_PARAMS = ("num_workers", "num_threads", "distributed", "cache_mb")
# The code that decides what training computes: the network, its data and their transforms.
CODE = (stages.models.dovenet, stages.training.dataset, stages.training.photo_cache)
SIZE_MULTIPLE = 16  # four 2x downsamplings (stem + three encoders)


def check_params(params) -> None:
    if params.optimizer not in OPTIMIZERS:
        raise StageError(f"train_paddle.optimizer must be one of {OPTIMIZERS}, not {params.optimizer!r}")
    if params.lr_schedule not in LR_SCHEDULES:
        raise StageError(f"train_paddle.lr_schedule must be one of {LR_SCHEDULES}, not {params.lr_schedule!r}")
    for key in ("input_size", "crop_size"):
        size = int(params[key])
        if size <= 0 or size % SIZE_MULTIPLE:
            raise StageError(f"train_paddle.{key} must be a positive multiple of {SIZE_MULTIPLE}, got {size}")
    if int(params.crop_size) > int(params.input_size) * max(params.augment.scale_range):
        raise StageError(
            "train_paddle.crop_size must fit in the largest resized image (input_size x max of augment.scale_range)"
        )
    for key in ("epochs", "batch_size"):
        if int(params[key]) < 1:
            raise StageError(f"train_paddle.{key} must be >= 1, got {params[key]}")


def fit_to_data(cfg, processes: int | None = None) -> tuple[DictConfig, list[Adaptation], LaunchSettings]:
    """Check the params, then adapt what the train split cannot meet (stages.training.adaptation): returns
    (the config to train with, the adaptations, the launch settings). ``processes``: how many train
    together (None: as many as train_paddle.distributed starts)."""
    params = cfg.train_paddle
    check_params(params)
    samples = len(read_split(cfg, "train"))
    if params.max_train_images:
        samples = min(samples, int(params.max_train_images))
    launch, adaptations = fit_processes(STAGE, params.get("distributed"), samples)
    processes = launch.nproc * launch.nnodes if processes is None else processes
    batch = fit_batch(STAGE, int(params.batch_size), samples, processes)
    adaptations += [batch] if batch else []
    # A warm-up longer than half the training leaves the schedule no room (the demo warms up for 11%).
    steps = int(params.epochs) * -(-samples // (batch.used if batch else int(params.batch_size)))
    if int(params.warmup_steps) > steps / 2:
        adaptations.append(
            Adaptation(
                f"{STAGE}.warmup_steps",
                int(params.warmup_steps),
                steps // 10,
                f"{steps} training steps in all, a tenth of them",
            )
        )
    return adapted_config(cfg, adaptations), adaptations, launch


def fingerprint(cfg, labels, samples) -> str:
    """What a checkpoint was made from: the training params, labels, data bytes and model/transform code."""
    return inputs_fingerprint(cfg, STAGE, labels, samples, CODE, RUNTIME_PARAMS)
