"""What a train_paddleseg run is made from, checked before anything starts: its params, fitted to the data
(stages.training.adaptation), the config's pretrained weights (stages.training.pretrained), and the
fingerprint of params, resolved config, data and code (stages.training.fingerprint), which a checkpoint
must match to be resumed."""

from __future__ import annotations

from omegaconf import DictConfig

import stages.training.paddleseg_compat
import stages.training.paddleseg_config
import stages.training.paddleseg_data
import stages.training.paddleseg_loop
import stages.training.photo_cache
from stages.common.config import StageError
from stages.data.split_lists import read_split
from stages.training.adaptation import Adaptation, adapted_config, fit_batch, fit_interval, fit_processes
from stages.training.fingerprint import inputs_fingerprint
from stages.training.launcher import LaunchSettings
from stages.training.paddleseg_config import STAGE, resolved_document
from stages.training.pretrained import check_pretrained

# Params that change how fast training runs, not what it computes: a checkpoint stays valid across them.
RUNTIME_PARAMS = ("num_workers", "num_threads", "cache_mb")
# The code that decides what training computes: PaddleSeg's fixes, what is built, the data and the loop.
CODE = (
    stages.training.paddleseg_compat,
    stages.training.paddleseg_config,
    stages.training.paddleseg_data,
    stages.training.paddleseg_loop,
    stages.training.photo_cache,
)


def check_params(params) -> None:
    for key in ("iters", "batch_size", "eval_interval", "log_interval", "input_size", "crop_size"):
        if int(params[key]) < 1:
            raise StageError(f"train_paddleseg.{key} must be >= 1, got {params[key]}")
    if not 0 <= float(params.weight_average) < 1:
        raise StageError(f"train_paddleseg.weight_average must be in [0, 1) (0: off), got {params.weight_average}")


def fit_to_data(cfg, processes: int | None = None) -> tuple[DictConfig, list[Adaptation], LaunchSettings]:
    """Check the params, then adapt what the train split cannot meet (stages.training.adaptation): returns
    (the config to train with, the adaptations, the launch settings). ``processes``: how many train
    together (None: as many as train_paddleseg.distributed starts)."""
    params = cfg.train_paddleseg
    check_params(params)
    samples = len(read_split(cfg, "train"))
    launch, adaptations = fit_processes(STAGE, params.get("distributed"), samples)
    processes = launch.nproc * launch.nnodes if processes is None else processes
    iters = int(params.iters)
    adaptations += [
        change
        for change in (
            fit_batch(STAGE, int(params.batch_size), samples, processes),
            fit_interval(STAGE, "eval_interval", int(params.eval_interval), iters),
            fit_interval(STAGE, "log_interval", int(params.log_interval), iters),
        )
        if change
    ]
    return adapted_config(cfg, adaptations), adaptations, launch


def check_before_start(cfg) -> LaunchSettings:
    """What the main checks before launching processes: params fitted to the data, pretrained weights."""
    cfg, _, launch = fit_to_data(cfg)
    check_pretrained(resolved_document(cfg), cfg.train_paddleseg.config)
    return launch


def fingerprint(cfg, resolved_config: str, labels, samples) -> str:
    """What a checkpoint was made from: the resolved PaddleSeg config, params, labels, data bytes and code."""
    return inputs_fingerprint(cfg, STAGE, labels, samples, CODE, RUNTIME_PARAMS, config=resolved_config)
