"""PaddleSeg's components, trained by doveseg's own loop.

PaddleSeg builds everything from its config (stages.training.paddleseg_config): the model, the datasets
and their transforms, the loss, the optimizer and its LR schedule. This module only runs them, instead
of ``paddleseg.core.train``, because the stage needs what that function cannot give: MLflow logging at
each log interval and evaluation, every PaddleSeg metric on the shared confusion matrix, the best model
and ``keep_checkpoint_max`` honoured across a resume (stages.training.paddleseg_checkpoint), and a resume
that restores the data order (stages.training.paddleseg_data). It also skips work core.train does for
nothing here (a FLOPs count and a 1 s sleep at the end, a host sync per step for each loss).
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
from tqdm import tqdm

from stages.evaluation.metrics import ConfusionMatrix
from stages.training import distributed, paddleseg_compat
from stages.training.paddleseg_checkpoint import resumed_average, save_best, save_checkpoint
from stages.training.paddleseg_config import STAGE, Parts, parameter_counts
from stages.training.paddleseg_data import IterationBatches, collate
from stages.training.summary import epochs, training_metrics

paddleseg_compat.apply()
from paddleseg.core import infer  # noqa: E402  (after the compatibility fixes)

paddleseg_train = importlib.import_module("paddleseg.core.train")


def train_step(parts: Parts, images: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """One optimisation step as PaddleSeg's train does it; returns the (detached) loss, unsynced.
    ``parts.model`` may be wrapped in paddle.DataParallel (its gradients are averaged in backward())."""
    logits = parts.model(images)
    network = getattr(parts.model, "_layers", parts.model)
    if hasattr(network, "loss_computation"):  # models that combine their own losses
        loss_list = network.loss_computation(logits, parts.losses, {"img": images, "label": labels})
    else:
        loss_list = paddleseg_train.loss_computation(logits, labels, None, parts.losses)
    loss = sum(loss_list)
    loss.backward()
    parts.optimizer.step()
    scheduler = parts.lr_scheduler
    if isinstance(scheduler, paddle.optimizer.lr.ReduceOnPlateau):
        scheduler.step(loss)
    elif isinstance(scheduler, paddle.optimizer.lr.LRScheduler):
        scheduler.step()
    parts.model.clear_gradients()
    return loss.detach().reshape([])


def evaluate(model: paddle.nn.Layer, dataset, num_classes: int, ignore_index: int = 255) -> dict:
    """PaddleSeg's evaluation (core.infer.inference: prediction resized back to each label's size),
    scored with the shared confusion matrix (stages.evaluation.metrics: mIoU over the classes present)."""
    matrix = ConfusionMatrix(num_classes, ignore_index)
    model.eval()
    with paddle.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            image = paddle.to_tensor(item["img"][np.newaxis])
            pred, _ = infer.inference(model, image, trans_info=item["trans_info"])
            matrix.update(pred.numpy(), item["label"])
    model.train()
    return matrix.scores()


def seed_everything(seed: int) -> None:
    """PaddleSeg's random transforms draw from Python's and NumPy's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    paddle.seed(seed)


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class LoopSettings:
    iters: int
    batch_size: int
    eval_interval: int
    log_interval: int
    keep_checkpoint_max: int
    num_workers: int = 0
    seed: int = 0
    weight_average: float = 0.0  # decay of the moving average that is validated and kept (0: the raw weights)


def loop_settings(document: dict, params, seed: int) -> LoopSettings:
    """The loop's settings from the resolved PaddleSeg config (iters, batch size) and train_paddleseg's params."""
    return LoopSettings(
        iters=int(document["iters"]),
        batch_size=int(document["batch_size"]),
        eval_interval=int(params.eval_interval),
        log_interval=int(params.log_interval),
        keep_checkpoint_max=int(params.keep_checkpoint_max),
        num_workers=int(params.num_workers),
        seed=seed,
        weight_average=float(params.weight_average),
    )


def train(
    parts: Parts,
    settings: LoopSettings,
    checkpoint_dir: Path,
    state: dict,
    on_log: Callable[[int, dict], None] = lambda step, values: None,
    on_eval: Callable[[int, dict, dict], None] = lambda step, scores, row: None,
) -> dict:
    """Train from ``state['iter']`` to ``settings.iters``: validate, keep the best model and checkpoint every
    ``eval_interval`` iterations and at the end. ``on_log(iter, {"train/loss", "train/lr"})`` runs every
    ``log_interval``; ``on_eval(iter, scores, history_row)`` after each validation. Returns the state.

    Under Paddle's launcher (stages.training.distributed) every process runs this: each trains on its share of
    every global batch of ``settings.batch_size`` and DataParallel averages the gradients; only the main
    process keeps the weight average, validates, checkpoints and calls back (the others wait for it on the launcher's store, and
    return right after the last step)."""
    start = int(state["iter"])
    if start >= settings.iters:
        return state
    num_classes = parts.train_dataset.num_classes
    per_epoch = len(parts.train_dataset) // settings.batch_size
    main = distributed.is_main_process()
    # the augmentations of a resumed run (and of each process) differ, its batches do not
    seed_everything(settings.seed + start + 100_003 * distributed.rank())
    for dataset, what in ((parts.train_dataset, "training photos"), (parts.val_dataset, "validation photos")):
        if hasattr(dataset, "fill_cache") and (main or dataset is parts.train_dataset):  # the main one validates
            dataset.fill_cache(what)
    sampler = distributed.RankBatches(
        IterationBatches(len(parts.train_dataset), settings.batch_size, settings.iters, start, settings.seed)
    )
    loader = paddle.io.DataLoader(
        parts.train_dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=settings.num_workers,
        return_list=True,
        use_shared_memory=settings.num_workers > 0,
    )
    average = resumed_average(checkpoint_dir, state, settings.weight_average) if main else None
    model = parts.model
    if parts.config.to_static_training:
        model = paddle.jit.to_static(model)
    distributed.barrier()  # every process built and restored its parts before DataParallel syncs them
    model = distributed.data_parallel(model)
    train_parts = Parts(parts.config, model, parts.train_dataset, parts.val_dataset, parts.optimizer, parts.losses)
    model.train()

    log_sum, log_count = paddle.zeros([]), 0  # since the last log line
    eval_sum, eval_count = paddle.zeros([]), 0  # since the last validation
    step_seconds, images = 0.0, 0
    started = time.perf_counter()
    iteration = start
    bar = tqdm(total=settings.iters, initial=start, desc=STAGE, unit="iter", disable=not main)
    for images_np, labels_np in loader:
        step_started = time.perf_counter()
        loss = train_step(train_parts, images_np, labels_np)
        iteration += 1
        log_sum, log_count = log_sum + loss, log_count + 1
        eval_sum, eval_count = eval_sum + loss, eval_count + 1
        step_seconds += time.perf_counter() - step_started
        images += settings.batch_size
        bar.update(1)

        if not main:
            if iteration % settings.eval_interval == 0 and iteration < settings.iters:
                distributed.barrier()  # while the main process validates and checkpoints
            continue
        if average.decay:
            average.update(parts.model)

        if iteration % settings.log_interval == 0 or iteration == settings.iters:
            mean_loss = float(log_sum) / log_count
            on_log(iteration, {"train/loss": mean_loss, "train/lr": float(parts.optimizer.get_lr())})
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            log_sum, log_count = paddle.zeros([]), 0

        if iteration % settings.eval_interval == 0 or iteration == settings.iters:
            average.swap_in(parts.model)  # validated, and kept when best, in place of the raw weights
            scores = evaluate(parts.model, parts.val_dataset, num_classes, parts.val_dataset.ignore_index)
            row = {
                "epoch": epochs(iteration, per_epoch),
                "iter": iteration,
                "train_loss": float(eval_sum) / eval_count,
                "val_mIoU": scores["mIoU"],
                "val_acc": scores["acc"],
            }  # summary.PLOT_COLUMNS
            eval_sum, eval_count = paddle.zeros([]), 0
            state["history"].append(row)
            if scores["mIoU"] > state["best_val_mIoU"]:
                state.update(best_val_mIoU=scores["mIoU"], best_iter=iteration, best_scores=scores)
                save_best(checkpoint_dir, parts, scores, iteration)
            average.swap_out(parts.model)
            now = time.perf_counter()
            state.update(
                iter=iteration,
                train_seconds=state["train_seconds"] + now - started,
                train_step_seconds=state["train_step_seconds"] + step_seconds,
                train_images=state["train_images"] + images,
            )
            started, step_seconds, images = now, 0.0, 0
            on_eval(iteration, scores, row)
            save_checkpoint(checkpoint_dir, parts, state, settings.keep_checkpoint_max, average)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_mIoU=f"{scores['mIoU']:.4f}")
            if iteration < settings.iters:
                distributed.barrier()
    bar.close()
    return state


def final_metrics(
    state: dict, parts: Parts, settings: LoopSettings, class_names, input_size: int, params, resumed_from: int, on_gpu
) -> dict:
    """metrics/train_paddleseg.json (stages.training.summary) of a finished ``state``; ``resumed_from``: the
    iterations done before this run, ``input_size``: the side validation sees."""
    return training_metrics(
        num_params=parameter_counts(parts.model),
        best_scores=state["best_scores"],
        class_names=class_names,
        iters=state["iter"],
        best_iter=state["best_iter"],
        resumed_from_iter=resumed_from,
        iters_per_epoch=len(parts.train_dataset) // settings.batch_size,
        train_seconds=state["train_seconds"],
        train_step_seconds=state["train_step_seconds"],
        train_images=state["train_images"],
        input_size=input_size,
        crop_size=int(params.crop_size),
        batch_size=settings.batch_size,
        device="gpu" if on_gpu else "cpu",
    )
