"""DoveNet trained with paddle.Model.prepare/fit (train_paddle): the datasets and loaders, the network with its
optimizer, resumed from a checkpoint when there is one, the prepared paddle.Model (bench/train_throughput.py
times this same path), the fit over the epochs left, and the metrics of the best model."""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np
import paddle
from paddle.static import InputSpec

from stages.models.dovenet import DoveNet, count_parameters
from stages.training import distributed
from stages.training.dataset import Augment, SegDataset, make_loader
from stages.training.dovenet_checkpoint import restore
from stages.training.dovenet_inputs import STAGE
from stages.training.epoch_tracker import EpochTracker
from stages.training.loss import SegLoss
from stages.training.optimizer import build_optimizer, scale_learning_rate
from stages.training.photo_cache import MB
from stages.training.summary import training_metrics
from stages.training.validation_metric import SegMetric
from stages.training.weight_average import WeightAverage


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and Paddle's generators (the augmentations draw from them)."""
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def build_model(net: DoveNet, optimizer, params, num_classes: int, on_gpu: bool) -> paddle.Model:
    """The prepared paddle.Model the stage trains (bench/train_throughput.py times this same path)."""
    # to_static compiles the network to a static graph: faster training on CPU (see bench/). Off on GPU,
    # where dygraph is fast and AMP is the speed-up.
    network = paddle.jit.to_static(net, full_graph=True) if params.to_static and not on_gpu else net
    # Any height/width: training sees crop_size crops, validation whole input_size images.
    model = paddle.Model(
        network,
        inputs=[InputSpec([None, 3, None, None], "float32", "image")],
        labels=[InputSpec([None, 1, None, None], "int64", "label")],
    )
    model.prepare(
        optimizer,
        SegLoss(num_classes, float(params.dice_weight)),
        SegMetric(num_classes),
        amp_configs="O1" if on_gpu and params.amp else None,
    )
    return model


def loaders(params, splits, seed: int) -> tuple[SegDataset, paddle.io.DataLoader, paddle.io.DataLoader]:
    """The training set and the train and val loaders, their photos decoded once into the cache."""
    input_size, batch_size = int(params.input_size), int(params.batch_size)
    aug = params.augment
    cache_bytes = int(params.cache_mb) * MB  # per dataset and process: photos decoded once, not per epoch
    train_set = SegDataset(
        splits["train"],
        input_size,
        params.mean,
        params.std,
        Augment(int(params.crop_size), tuple(aug.scale_range), float(aug.flip_prob), float(aug.color_jitter)),
        seed,
        cache_bytes,
    )
    val_set = SegDataset(splits["val"], input_size, params.mean, params.std, cache_bytes=cache_bytes)
    train_set.fill_cache("training photos")
    val_set.fill_cache("validation photos")
    train_loader = make_loader(
        train_set,
        batch_size,
        train=True,
        num_workers=int(params.num_workers),
        seed=seed,
        max_samples=params.max_train_images,
    )
    val_loader = make_loader(val_set, batch_size, train=False, num_workers=int(params.num_workers))
    return train_set, train_loader, val_loader


def train(cfg, labels, splits, state: dict, checkpoint_dir: Path, on_gpu: bool, callbacks) -> EpochTracker:
    """paddle.Model.fit over the epochs ``state`` has not done yet; returns the tracker (history, best)."""
    # Fresh parameter names (conv2d_0.w_0, ...) whatever ran before in this process: the optimizer
    # checkpoint is keyed by them.
    with paddle.utils.unique_name.guard():
        params, total_epochs = cfg.train_paddle, int(cfg.train_paddle.epochs)
        train_set, train_loader, val_loader = loaders(params, splits, int(cfg.seed))

        net = DoveNet(labels.num_classes)
        # The output conv reads the decoders' un-normalised residual sums (std ~20): a plain Adam step there
        # moves the class scores ~100x more than elsewhere, which makes the loss jump. Damp its steps.
        scale_learning_rate(net.output_conv, float(params.head_lr_scale))
        optimizer = build_optimizer(params, net.parameters(), total_epochs * len(train_loader))
        done = len(state["history"])
        average = WeightAverage(float(params.weight_average))
        if done:
            average = restore(checkpoint_dir, net, optimizer, state, average)
            print(f"{STAGE}: resuming after epoch {done} of {total_epochs} from {checkpoint_dir}")

        distributed.barrier()  # paddle.Model wraps the net in DataParallel (a collective) when launched
        model = build_model(net, optimizer, params, labels.num_classes, on_gpu)
        tracker = EpochTracker(
            [train_set],
            [train_loader.batch_sampler.sampler],
            state,
            checkpoint_dir,
            total_epochs,
            average,
            len(train_loader),
            labels.names,
        )
        if total_epochs > done:
            model.fit(
                train_loader,
                val_loader,
                epochs=total_epochs - done,
                eval_freq=1,
                verbose=0,
                callbacks=[tracker, *callbacks],
            )
        return tracker


def best_network(num_classes: int, weights: dict) -> DoveNet:
    """A DoveNet holding ``weights``, in eval mode (to export and log)."""
    net = DoveNet(num_classes)
    net.set_state_dict(weights)
    net.eval()
    return net


def model_summary(num_classes: int, input_size: int) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        paddle.summary(DoveNet(num_classes), (1, 3, input_size, input_size))
    return buffer.getvalue()


def final_metrics(state: dict, best_net: DoveNet, class_names, params, resumed_from: int, on_gpu: bool) -> dict:
    """metrics/train_paddle.json (stages.training.summary) of a finished ``state``; ``resumed_from``: the
    epochs done before this run."""
    per_epoch = int(state.get("iters_per_epoch", 1))
    return training_metrics(
        num_params=count_parameters(best_net),
        best_scores=state.get("best_scores"),
        class_names=class_names,
        iters=len(state["history"]) * per_epoch,
        best_iter=state["best_epoch"] * per_epoch,
        resumed_from_iter=resumed_from * per_epoch,
        iters_per_epoch=per_epoch,
        train_seconds=state["train_seconds"],
        train_step_seconds=state["train_step_seconds"],
        train_images=state["train_images"],
        input_size=int(params.input_size),
        crop_size=int(params.crop_size),
        batch_size=int(params.batch_size),
        device="gpu" if on_gpu else "cpu",
    )
