"""The device a trainer runs on: the GPU when Paddle has CUDA and sees one, else the CPU with a number of
math threads that suits how many processes share it."""

from __future__ import annotations

import paddle

from stages.training import distributed


def use_device(cpu_threads: int) -> bool:
    """GPU when Paddle has CUDA and sees a GPU, else CPU with ``cpu_threads`` math threads. True on GPU."""
    on_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    paddle.set_device("gpu" if on_gpu else "cpu")
    if not on_gpu:
        paddle.base.core.set_num_threads(cpu_threads)
    return on_gpu


def math_threads(params) -> int:
    """DoveNet's CPU math threads: ``params.num_threads`` when > 0. Else this process's share of the cores,
    halved under to_static: the static-graph executor already runs independent ops on two threads, and on 2
    cores 1 math thread trained 11.1 img/s against 9.8 with 2 (bench/train_throughput.py)."""
    if int(params.num_threads) > 0:
        return int(params.num_threads)
    cores = distributed.cpu_threads(0)  # this process's share when several train together
    return max(1, cores // 2) if params.to_static else cores


def configure_device(params) -> bool:
    """train_paddle's device from its params (see math_threads). True on GPU."""
    return use_device(math_threads(params))
