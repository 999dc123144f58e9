"""Data-parallel training under Paddle's launcher (`python -m paddle.distributed.launch`), for both trainers.

A trainer stays one ``run(cfg)``. Started as one process it trains alone, as before. Started by the
launcher (N processes on this machine, on one or several machines) every process runs the same
``run(cfg)``: it calls ``init_if_launched()``, trains on its share of each global batch (``RankBatches``),
paddle.DataParallel averages the gradients (paddle.Model.fit wraps the network itself), and only the
main process (global rank 0) logs to MLflow and writes outputs.

Starting those processes is stages.training.launcher's: a trainer's main relaunches itself under the
launcher when ``<stage>.distributed`` asks for more than one process.

Measured with Paddle 3.3.1 (CPU build): the launcher gives CPU processes the gloo backend and
all_reduce, DataParallel and paddle.Model.fit (to_static included) work. But gloo gives up on any
collective (all_reduce, dist.barrier) that waits longer than 30 s for a peer, and Paddle offers no
setting for it (PADDLE_PG_TIMEOUT only reaches NCCL). So a process must never sit in a collective while
another works alone for longer than that: ``barrier()`` waits on the launcher's TCP store instead, and
a non-main process simply returns after the last training step while the main one writes outputs.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import paddle
import paddle.distributed as dist

# Set by the launcher (and by paddle.distributed.spawn) in each process it starts; paddle.Model reads them too.
WORLD_SIZE_ENV = "PADDLE_TRAINERS_NUM"
RANK_ENV = "PADDLE_TRAINER_ID"
LOCAL_SIZE_ENV = "PADDLE_LOCAL_SIZE"
BARRIER_TIMEOUT_S = 3600.0
_barrier_numbers = itertools.count()


# --- who am I -------------------------------------------------------------------------------------


def world_size() -> int:
    """Processes training together (1 when not launched). Read from the launcher's environment, so it
    is right before init_parallel_env too."""
    return int(os.environ.get(WORLD_SIZE_ENV, "1"))


def rank() -> int:
    """This process's global rank, 0..world_size()-1."""
    return int(os.environ.get(RANK_ENV, "0"))


def is_main_process() -> bool:
    """True in the one process that logs to MLflow and writes outputs (global rank 0)."""
    return rank() == 0


def local_world_size() -> int:
    """Processes training together on this machine."""
    return int(os.environ.get(LOCAL_SIZE_ENV, "1"))


def cpu_threads(requested: int = 0) -> int:
    """CPU math threads for this process: ``requested`` when > 0, else this machine's cores shared
    among its processes (N processes with all cores each would fight over them)."""
    if requested > 0:
        return requested
    return max(1, len(os.sched_getaffinity(0)) // local_world_size())


def launched() -> bool:
    """True in a process the launcher (or paddle.distributed.spawn) started."""
    return RANK_ENV in os.environ


def init_if_launched() -> None:
    """Join the process group when several processes train together; a no-op otherwise, and when done.

    The launcher already picks the backend (NCCL for GPU processes, gloo when it gave a process no
    device); a CPU-only Paddle build is told gloo in case another starter left it unset.
    """
    if world_size() < 2 or dist.is_initialized():
        return
    if not paddle.is_compiled_with_cuda():
        os.environ.setdefault("PADDLE_DISTRI_BACKEND", "gloo")
    dist.init_parallel_env()


# --- working together -----------------------------------------------------------------------------


def barrier(timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait until every process got here; a no-op in a single process.

    Unlike dist.barrier() (gloo: fails after 30 s; and it needs a process group even alone), this waits
    on the launcher's TCP store, so the main process may spend minutes alone (MLflow setup, a checkpoint)
    while the others wait. Every process must call it the same number of times.
    """
    if world_size() < 2:
        return
    init_if_launched()
    store = paddle.base.core.create_or_get_global_tcp_store()  # the store init_parallel_env connected to
    key = f"doveseg/barrier/{next(_barrier_numbers)}"
    store.add(key, 1)
    deadline = time.monotonic() + timeout_s
    while store.add(key, 0) < world_size():
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank()}: other processes did not reach the barrier within {timeout_s:.0f} s")
        time.sleep(0.05)


def sum_over_processes(array: np.ndarray) -> np.ndarray:
    """The element-wise sum of ``array`` over all processes (e.g. confusion matrices of evaluation
    shards); ``array`` itself in a single process."""
    if world_size() < 2:
        return array
    init_if_launched()
    tensor = paddle.to_tensor(np.ascontiguousarray(array))
    dist.all_reduce(tensor)  # a sum by default
    return tensor.numpy()


def data_parallel(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """``model`` wrapped in paddle.DataParallel when several processes train together, else itself.

    DataParallel copies rank 0's parameters to every process when it wraps, and averages gradients
    during backward(). paddle.Model.fit does this itself: only hand-written loops need it.
    """
    if world_size() < 2:
        return model
    init_if_launched()
    return paddle.DataParallel(model)


class RankBatches(paddle.io.BatchSampler):
    """This process's share of every global batch that ``batches`` yields.

    ``batches`` is any batch sampler over the *global* batch size (e.g. paddle.io.BatchSampler(sampler=...,
    batch_size=global_batch)). Each global batch is padded by repeating its first indices to a multiple
    of the world size, then split in equal consecutive parts, part r for rank r: the layout of
    paddle.io.DistributedBatchSampler, which paddle.Model's distributed evaluation relies on when it
    gathers the parts and trims the padding. Every process thus runs the same number of steps, and with
    N processes training sees the samples a single process would see at the same global batch size.
    In a single process it yields the batches unchanged.
    """

    def __init__(
        self, batches: Iterable[Sequence[int]], num_replicas: int | None = None, replica_rank: int | None = None
    ):
        self.batches = batches
        self.num_replicas = world_size() if num_replicas is None else int(num_replicas)
        self.rank = rank() if replica_rank is None else int(replica_rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in 0..{self.num_replicas - 1}")
        # The wrapped sampler stays reachable as loader.batch_sampler.sampler (set_epoch callers use it).
        self.sampler = getattr(batches, "sampler", None)

    def set_epoch(self, epoch: int) -> None:
        for target in (self.batches, self.sampler):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
                return

    def __iter__(self) -> Iterator[list[int]]:
        replicas = self.num_replicas
        for indices in self.batches:
            batch = list(indices)
            if replicas == 1:
                yield batch
                continue
            part = -(-len(batch) // replicas)  # ceil
            padded = (batch * replicas)[: part * replicas]
            yield padded[self.rank * part : (self.rank + 1) * part]

    def __len__(self) -> int:
        return len(self.batches)
