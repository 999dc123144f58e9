"""DoveNet's optimizer and learning-rate schedule, from train_paddle's params (PaddleSeg's models take theirs
from their config)."""

from __future__ import annotations

import paddle

OPTIMIZERS = ("adamw", "rmsprop", "momentum")
LR_SCHEDULES = ("cosine", "constant")


def build_optimizer(params, parameters, total_steps: int):
    """``params.optimizer`` over ``parameters`` with ``params.lr_schedule`` and a linear warm-up of
    ``params.warmup_steps``; the schedule is stepped every batch, ``total_steps`` in all."""
    lr = float(params.lr)
    schedule = lr  # constant
    if params.lr_schedule == "cosine":  # stepped every batch, down to lr / 100
        schedule = paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=max(1, total_steps), eta_min=lr * 0.01)
    if params.warmup_steps:
        schedule = paddle.optimizer.lr.LinearWarmup(schedule, int(params.warmup_steps), 0.0, lr)
    decay = float(params.weight_decay) or None
    if params.optimizer == "adamw":
        return paddle.optimizer.AdamW(schedule, parameters=parameters, weight_decay=decay or 0.0)
    if params.optimizer == "rmsprop":  # the tutorial's choice
        return paddle.optimizer.RMSProp(schedule, rho=0.9, epsilon=1e-7, parameters=parameters, weight_decay=decay)
    return paddle.optimizer.Momentum(schedule, momentum=0.9, parameters=parameters, weight_decay=decay)


def scale_learning_rate(layer: paddle.nn.Layer, scale: float) -> None:
    """Give ``layer``'s parameters ``scale`` times the optimizer's learning rate (set before building it)."""
    for param in layer.parameters():
        param.optimize_attr["learning_rate"] = scale
