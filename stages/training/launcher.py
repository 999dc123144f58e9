"""Starting a trainer under Paddle's launcher (`python -m paddle.distributed.launch`), for both trainers.

The DVC stage command never changes: the trainer's main calls ``relaunch_if_configured(STAGE)`` before
``stage_main(run)``; when ``<stage>.distributed`` asks for more than one process it replaces itself with
the launcher running the same command and overrides (see ``LaunchSettings``). What the processes then do
together (ranks, barriers, sharded batches) is stages.training.distributed's.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paddle

from stages.common.config import StageError
from stages.training.distributed import launched


@dataclass(frozen=True)
class LaunchSettings:
    """A trainer's ``distributed`` params block (absent keys take these defaults)."""

    nproc: int = 1  # processes on this machine: one per GPU, or CPU processes ("auto": see auto_nproc)
    devices: str | None = None  # GPU ids for them, e.g. "0,1" (GPU builds only); None: the launcher's choice
    nnodes: int = 1  # machines taking part; run the same command on each
    master: str | None = None  # "host:port" of the rendezvous on the first machine, when nnodes > 1
    node_rank: int | None = None  # this machine's rank 0..nnodes-1; None: the master assigns one
    log_dir: str | None = None  # the launcher's per-process logs (workerlog.N); None: a temp folder

    @property
    def needs_launcher(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1


AUTO = "auto"
CPU_AUTO_NPROC = 2


def auto_nproc(devices: str | None = None) -> int:
    """``nproc: auto``: one process per GPU (``devices``, else every visible one); on CPU, two processes
    when there are two cores or more. Measured on 2 cores with PaddleSeg's UNet: 2 processes x 1 math
    thread train 1.4x the images per second of 1 process x 2 threads (dygraph's ops barely use a second
    thread). More CPU processes were not measured: each adds a gradient all-reduce per step, and shrinks
    the per-process batch that BatchNorm sees."""
    if devices:
        return len(str(devices).split(","))
    gpus = paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0
    return gpus or max(1, min(CPU_AUTO_NPROC, len(os.sched_getaffinity(0))))


def launch_settings(node, where: str = "distributed") -> LaunchSettings:
    """LaunchSettings from a config node or dict (None: one process; ``nproc: auto`` resolved to a
    number); bad values raise StageError."""
    values = dict(node or {})
    unknown = set(values) - set(LaunchSettings.__dataclass_fields__)
    if unknown:
        raise StageError(
            f"{where}: unknown keys {sorted(unknown)}; known: {sorted(LaunchSettings.__dataclass_fields__)}"
        )
    if values.get("nproc") == AUTO:
        values["nproc"] = auto_nproc(values.get("devices"))
    if not isinstance(values.get("nproc", 1), int):
        raise StageError(f"{where}.nproc: a number of processes or {AUTO!r}, got {values['nproc']!r}")
    settings = LaunchSettings(**values)
    if int(settings.nproc) < 1 or int(settings.nnodes) < 1:
        raise StageError(f"{where}: nproc and nnodes must be >= 1, got {settings.nproc} and {settings.nnodes}")
    if settings.devices:
        if not paddle.is_compiled_with_cuda():
            raise StageError(f"{where}.devices={settings.devices!r} needs a GPU build of Paddle; on CPU set only nproc")
        count = len(str(settings.devices).split(","))
        if count != int(settings.nproc):
            raise StageError(
                f"{where}: devices {settings.devices!r} lists {count} GPUs but nproc is "
                f"{settings.nproc}; give one GPU per process"
            )
    if int(settings.nnodes) > 1 and not settings.master:
        raise StageError(f'{where}: nnodes={settings.nnodes} needs master: "host:port" of the first machine')
    if settings.node_rank is not None and not 0 <= int(settings.node_rank) < int(settings.nnodes):
        raise StageError(f"{where}: node_rank {settings.node_rank} is not in 0..{int(settings.nnodes) - 1}")
    return settings


def launch_command(
    module: str,
    nproc: int,
    devices: str | None = None,
    extra: Sequence[str] = (),
    *,
    nnodes: int = 1,
    master: str | None = None,
    node_rank: int | None = None,
    log_dir: str | None = None,
) -> list[str]:
    """The command that runs ``python -m <module> <extra...>`` in ``nproc`` processes under Paddle's launcher.

    The launcher only runs ``*.py`` files with Python, anything else as an executable, so the module is
    given as ``<python> -u -m <module>`` (-u: rank 0's output, which the launcher echoes, is not held back).
    """
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(int(nproc))]
    if devices:
        command += ["--devices", str(devices)]
    if int(nnodes) > 1:
        command += ["--nnodes", str(int(nnodes)), "--master", str(master)]
        if node_rank is not None:
            command += ["--rank", str(int(node_rank))]
    log_dir = log_dir or os.path.join(tempfile.gettempdir(), f"paddle-launch-{module}")
    command += ["--log_dir", str(log_dir), "--log_overwrite", "true"]
    return command + [sys.executable, "-u", "-m", module, *extra]


def relaunch_if_configured(
    stage: str, argv: Sequence[str] | None = None, check: Callable[[object], LaunchSettings] | None = None
) -> None:
    """In a trainer's main, before stage_main(run): when ``<stage>.distributed`` (params.yaml plus the
    command line's overrides) asks for several processes and this process is not one the launcher
    started, replace it with the launcher running ``python -m stages.<stage>`` and the same overrides.
    Otherwise return, and the stage runs in this process as usual.

    ``check(cfg)``, when given, checks the composed config before anything starts and returns the launch
    settings to use (a trainer lowers nproc on a small data set); its StageError stops the stage here."""
    if launched():
        return
    from stages.common.config import load_params  # Hydra's compose, only needed here

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_params([arg for arg in argv if not arg.startswith(("-", "hydra.", "hydra/"))])
    except Exception:  # noqa: BLE001  bad overrides: stage_main reports them properly right after
        return
    try:
        if check is not None:
            settings = check(cfg)
        else:
            settings = launch_settings(cfg[stage].get("distributed"), f"{stage}.distributed")
    except StageError as err:
        sys.exit(f"error: {err}")
    if not settings.needs_launcher:
        return
    command = launch_command(
        f"stages.{stage}",
        settings.nproc,
        settings.devices,
        argv,
        nnodes=settings.nnodes,
        master=settings.master,
        node_rank=settings.node_rank,
        log_dir=settings.log_dir,
    )
    print(
        f"{stage}: {settings.nproc} process(es) x {settings.nnodes} machine(s) under Paddle's launcher:\n"
        f"  {shlex.join(command)}",
        flush=True,
    )
    os.execv(command[0], command)
