"""Training settings a small data set cannot meet, adapted before training starts (both trainers).

The profiles' batch sizes and intervals were chosen for the demo's 87 training photos. A person's own set
may hold 6: a global batch of 8 cannot be filled, two processes cannot share one photo. Rather than stop,
a trainer adapts such a setting to the nearest one that works, says so in one line, records it in its
MLflow run as the param ``adapted.<key>`` ("8 -> 6: ...") and trains with it (the run's params show the
value used). Settings that cannot be adapted raise StageError before any process or MLflow run starts:
each trainer's ``fit_to_data(cfg)`` runs in its main before Paddle's launcher (see
stages.training.launcher.relaunch_if_configured) and again at the start of ``run(cfg)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import mlflow
from omegaconf import OmegaConf

from stages.common.config import StageError
from stages.training.launcher import AUTO, LaunchSettings, launch_settings


@dataclass(frozen=True)
class Adaptation:
    key: str  # the params key, e.g. "train_paddleseg.batch_size"
    requested: object
    used: object
    reason: str

    def describe(self) -> str:
        return f"{self.requested} -> {self.used}: {self.reason}"


def fit_processes(stage: str, node, samples: int) -> tuple[LaunchSettings, list[Adaptation]]:
    """The launch settings of ``<stage>.distributed`` (``node``) for ``samples`` training photos: every
    process needs at least one of them in each global batch, so ``nproc`` is lowered to ``samples`` when
    it asks for more. Several machines are not adapted (each one would have to agree): that is a
    StageError naming the values that work."""
    settings = launch_settings(node, f"{stage}.distributed")
    if settings.nproc * settings.nnodes <= samples:
        return settings, []
    if settings.nnodes > 1:
        raise StageError(
            f"{stage}.distributed: {settings.nnodes} machines x {settings.nproc} processes need at "
            f"least {settings.nproc * settings.nnodes} training photos, the train split has {samples}; "
            f"train on one machine ({stage}.distributed.nnodes=1) or with "
            f"{stage}.distributed.nproc={max(1, samples // settings.nnodes)} or less"
        )
    requested = (node or {}).get("nproc", 1)
    shown = f"{AUTO} ({settings.nproc})" if requested == AUTO else settings.nproc
    reason = f"{samples} training photo(s), at least one per process"
    adaptations = [Adaptation(f"{stage}.distributed.nproc", shown, samples, reason)]
    devices = settings.devices
    if devices:  # the first ones
        devices = ",".join(str(devices).split(",")[:samples])
        adaptations.append(Adaptation(f"{stage}.distributed.devices", settings.devices, devices, reason))
    return replace(settings, nproc=samples, devices=devices), adaptations


def fit_batch(stage: str, batch_size: int, samples: int, processes: int) -> Adaptation | None:
    """``<stage>.batch_size`` is the global batch (processes x each one's share). It must fit in the
    ``samples`` one epoch draws, and give every process at least one: adapted to the largest multiple of
    ``processes`` that fits (``processes`` <= ``samples``, see fit_processes)."""
    if processes <= batch_size <= samples:
        return None
    used = processes if batch_size < processes else samples // processes * processes
    where = f" shared by {processes} processes" if processes > 1 else ""
    return Adaptation(f"{stage}.batch_size", batch_size, used, f"{samples} training photos per epoch{where}")


def fit_interval(stage: str, key: str, value: int, iters: int) -> Adaptation | None:
    """An interval in iterations (eval_interval, log_interval) longer than the whole training: ``iters``."""
    if value <= iters:
        return None
    return Adaptation(f"{stage}.{key}", value, iters, f"longer than {stage}.iters={iters}")


def adapted_config(cfg, adaptations: list[Adaptation]):
    """A copy of ``cfg`` holding the values used (``cfg`` itself is left as it was)."""
    if not adaptations:
        return cfg
    cfg = copy.deepcopy(cfg)
    for adaptation in adaptations:
        OmegaConf.update(cfg, adaptation.key, adaptation.used, merge=False)
    return cfg


def summary_line(stage: str, adaptations: list[Adaptation]) -> str:
    """The one line a trainer prints about its adapted settings ("" when none were)."""
    if not adaptations:
        return ""
    changes = "; ".join(f"{a.key.removeprefix(stage + '.')} {a.describe()}" for a in adaptations)
    return f"{stage}: adapted to the data (see README, 'Bring your own photos'): {changes}"


def log_adaptations(adaptations: list[Adaptation]) -> None:
    """The adapted settings as params of the active MLflow run: ``adapted.<key>`` = "requested -> used: why"."""
    if adaptations:
        mlflow.log_params({f"adapted.{a.key}": a.describe() for a in adaptations})
