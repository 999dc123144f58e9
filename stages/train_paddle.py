"""train_paddle: the tutorial's DoveNet on paddle.Model.prepare/fit, tracked in MLflow, resumable.

Reads the train/val split lists, trains with validation mIoU every epoch, keeps the best weights, and
writes models/paddle/ (best weights, an exported inference model, meta.json for predict), the metrics
JSON, the per-epoch plot CSV and the MLflow run-id file. After every epoch the full training state goes
to checkpoints/paddle/, so a killed run, rerun with the same inputs, continues where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import time
from pathlib import Path

import mlflow
import mlflow.paddle
import numpy as np
import paddle
from omegaconf import DictConfig, OmegaConf
from paddle.static import InputSpec
from tqdm import tqdm

import stages.models.dovenet
import stages.training.dataset
import stages.training.photo_cache
from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir, trainer_output_paths, write_json_atomic, write_text_atomic
from stages.data.labels import IGNORE_INDEX, read_labels
from stages.data.split_lists import check_samples, read_split, split_file
from stages.evaluation.metrics import ConfusionMatrix
from stages.models.dovenet import DoveNet, count_parameters
from stages.models.inference_model import META_NAME, ModelMeta, export
from stages.tracking.registry import registered_model_name
from stages.tracking.runs import log_metrics, training_run
from stages.training import distributed
from stages.training.adaptation import (
    Adaptation,
    adapted_config,
    fit_batch,
    fit_processes,
    log_adaptations,
    summary_line,
)
from stages.training.dataset import Augment, SegDataset, make_loader
from stages.training.distributed import LaunchSettings
from stages.training.photo_cache import MB
from stages.training.summary import training_metrics, validation_metrics, write_plots
from stages.training.weight_average import WeightAverage

STAGE = "train_paddle"
# Params that change how fast training runs, not what it computes: a checkpoint stays valid across them.
RUNTIME_PARAMS = ("num_workers", "num_threads", "distributed", "cache_mb")
SIZE_MULTIPLE = 16  # four 2x downsamplings (stem + three encoders)
# The logged model is a Paddle static graph: loading it needs Paddle only. Saying so spares MLflow's
# requirement inference, which loads the model in a subprocess (13 s for a tiny model).
LOADS_WITH = mlflow.paddle.get_default_pip_requirements()


class SegMetric(paddle.metric.Metric):
    """paddle.metric adapter over the shared ConfusionMatrix: mIoU and pixel accuracy of argmax predictions."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.matrix = ConfusionMatrix(num_classes, IGNORE_INDEX)
        self.last_scores = {}  # every score of the last accumulate(): fit resets the matrix before on_eval_end

    def name(self):
        return ["mIoU", "acc"]

    def compute(self, logits, label):
        return paddle.argmax(logits, axis=1, keepdim=True), label

    def update(self, pred, label):
        self.matrix.update(pred, label)

    def accumulate(self):
        self.last_scores = self.matrix.scores()
        return [self.last_scores["mIoU"], self.last_scores["acc"]]

    def reset(self):
        self.matrix.reset()


class SegLoss(paddle.nn.Layer):
    """Cross-entropy (the tutorial's loss) plus ``dice_weight`` x soft Dice loss averaged over classes.

    Dice counts a small class as much as the background, which speeds up learning thin/small objects on a
    small data set. Pixels labelled 255 count in neither term.
    """

    def __init__(self, num_classes: int, dice_weight: float = 0.0):
        super().__init__()
        self.num_classes, self.dice_weight = num_classes, dice_weight
        self.cross_entropy = paddle.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, axis=1)

    def forward(self, logits, label):
        loss = self.cross_entropy(logits, label)
        if not self.dice_weight:
            return loss
        valid = (label != IGNORE_INDEX).astype(logits.dtype)
        target = paddle.where(label == IGNORE_INDEX, paddle.zeros_like(label), label).squeeze(1)
        target = paddle.nn.functional.one_hot(target, self.num_classes).transpose([0, 3, 1, 2]) * valid
        probs = paddle.nn.functional.softmax(logits, axis=1) * valid
        intersection = (probs * target).sum(axis=[0, 2, 3])
        total = probs.sum(axis=[0, 2, 3]) + target.sum(axis=[0, 2, 3])
        dice = (2 * intersection + 1) / (total + 1)
        return loss + self.dice_weight * (1 - dice.mean())


def configure_device(params) -> bool:
    """GPU when Paddle has CUDA and sees a GPU, else CPU with ``math_threads(params)`` threads. True on GPU."""
    on_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    paddle.set_device("gpu" if on_gpu else "cpu")
    if not on_gpu:
        paddle.base.core.set_num_threads(math_threads(params))
    return on_gpu


def math_threads(params) -> int:
    """CPU math threads: ``params.num_threads`` when > 0. Else this process's share of the cores, halved
    under to_static: the static-graph executor already runs independent ops on two threads, and on 2
    cores 1 math thread trained 11.1 img/s against 9.8 with 2 (bench/train_throughput.py)."""
    if int(params.num_threads) > 0:
        return int(params.num_threads)
    cores = distributed.cpu_threads(0)  # this process's share when several train together
    return max(1, cores // 2) if params.to_static else cores


def output_paths(cfg) -> dict[str, Path]:
    return trainer_output_paths(cfg, "paddle")


def fingerprint(cfg, labels, samples) -> str:
    """What a checkpoint was made from: the training params, labels, data bytes and model/transform code."""
    params = {k: v for k, v in _plain(cfg.train_paddle).items() if k not in RUNTIME_PARAMS}
    digest = hashlib.sha256(
        json.dumps({"params": params, "seed": int(cfg.seed), "labels": labels.names}, sort_keys=True).encode()
    )
    for name in ("train", "val"):
        digest.update(split_file(cfg, name).read_bytes())
    for sample in samples:
        digest.update(Path(sample.image).read_bytes())
        digest.update(Path(sample.label).read_bytes())
    for module in (stages.models.dovenet, stages.training.dataset, stages.training.photo_cache):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def load_checkpoint(checkpoint_dir: Path, expected_fingerprint: str) -> dict | None:
    """The saved training state when it is unfinished and made from the same inputs, else None."""
    state_file = checkpoint_dir / "state.json"
    if not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text())
    except ValueError:
        print(f"{state_file}: unreadable checkpoint state; training from scratch")
        return None
    if state.get("fingerprint") != expected_fingerprint:
        print(f"{checkpoint_dir}: checkpoint made from other params/data/code; training from scratch")
        return None
    if state.get("completed"):
        return None
    return state


def save_checkpoint(
    checkpoint_dir: Path, weights: dict, optimizer, best_weights: dict | None, average: dict | None, state: dict
) -> None:
    """Everything needed to continue, replaced in one rename so a kill never leaves half a checkpoint."""
    with atomic_dir(checkpoint_dir) as tmp:
        paddle.save(weights, str(tmp / "model.pdparams"))
        paddle.save(optimizer.state_dict(), str(tmp / "optimizer.pdopt"))  # includes the LR schedule
        for name, saved in (("best", best_weights), ("average", average)):
            if saved is not None:
                paddle.save(saved, str(tmp / f"{name}.pdparams"))
        write_json_atomic(tmp / "state.json", state)


OPTIMIZERS = ("adamw", "rmsprop", "momentum")
LR_SCHEDULES = ("cosine", "constant")


def build_optimizer(params, parameters, total_steps: int):
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


class EpochTracker(paddle.callbacks.Callback):
    """Per epoch: reseeds the data order, averages the train loss, then after validation records history,
    logs to MLflow, keeps the best weights and writes the checkpoint. ``first_epoch`` offsets fit's count
    (fit always counts from 0) when resuming. Under Paddle's launcher only the main process (rank 0)
    records, logs and checkpoints; the others just follow the epochs."""

    def __init__(
        self,
        datasets,
        samplers,
        state: dict,
        checkpoint_dir: Path,
        total_epochs: int,
        average: WeightAverage,
        steps_per_epoch: int,
        class_names,
    ):
        super().__init__()
        self.average = average
        self.steps_per_epoch, self.class_names = steps_per_epoch, class_names
        self.datasets, self.samplers = datasets, samplers
        self.state, self.checkpoint_dir = state, checkpoint_dir
        self.first_epoch = len(state["history"])
        self.best_weights = state.pop("_best_weights", None)
        self.total_epochs = total_epochs
        self.main = distributed.is_main_process()

    def on_train_begin(self, logs=None):
        self.bar = tqdm(
            total=self.total_epochs, initial=self.first_epoch, desc=STAGE, unit="epoch", disable=not self.main
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = self.first_epoch + epoch + 1  # 1-based, the MLflow step
        for item in (*self.datasets, *self.samplers):
            item.set_epoch(self.epoch)
        self.loss_sum, self.images, self.started = 0.0, 0, time.perf_counter()

    def on_train_batch_end(self, step, logs=None):
        self.loss_sum += float(logs["loss"][0]) * logs["batch_size"]
        self.images += logs["batch_size"]
        if self.average.decay:
            self.average.update(self.model.network)

    def on_epoch_end(self, epoch, logs=None):
        self.state["train_step_seconds"] += time.perf_counter() - self.started
        self.state["train_images"] += self.images * distributed.world_size()  # each process: its share

    def on_eval_begin(self, logs=None):
        self.average.swap_in(self.model.network)  # every process: distributed evaluation gathers them all

    def on_eval_end(self, logs=None):
        if self.main:
            self.record(logs)
        self.average.swap_out(self.model.network)

    def record(self, logs) -> None:
        train_loss = self.loss_sum / max(1, self.images)
        scores = self.model._metrics[0].last_scores  # the whole validation split (gathered when launched)
        row = {
            "epoch": self.epoch,
            "iter": self.epoch * self.steps_per_epoch,
            "train_loss": train_loss,
            "val_mIoU": float(logs["mIoU"]),
            "val_acc": float(logs["acc"]),
        }
        self.state["history"].append(row)
        self.state["iters_per_epoch"] = self.steps_per_epoch
        log_metrics(
            {
                "train/loss": train_loss,
                "train/lr": self.model._optimizer.get_lr(),
                **validation_metrics(scores, self.class_names, self.epoch),
            },
            step=self.epoch,
        )
        if row["val_mIoU"] > self.state["best_val_mIoU"]:
            self.state.update(best_val_mIoU=row["val_mIoU"], best_epoch=self.epoch, best_scores=scores)
            self.best_weights = {k: v.clone() for k, v in self.model.network.state_dict().items()}
        self.state["train_seconds"] += time.perf_counter() - self.started
        self.state["average_steps"] = self.average.steps
        save_checkpoint(
            self.checkpoint_dir,
            self.average.raw_weights(self.model.network),
            self.model._optimizer,
            self.best_weights,
            self.average.average,
            self.state,
        )
        self.bar.set_postfix(loss=f"{train_loss:.3f}", val_mIoU=f"{row['val_mIoU']:.3f}")
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()


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


def model_summary(num_classes: int, input_size: int) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        paddle.summary(DoveNet(num_classes), (1, 3, input_size, input_size))
    return buffer.getvalue()


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


def new_state(fingerprint_: str, run_id: str) -> dict:
    return {
        "fingerprint": fingerprint_,
        "run_id": run_id,
        "history": [],
        "best_val_mIoU": -1.0,
        "best_epoch": 0,
        "train_seconds": 0.0,
        "train_step_seconds": 0.0,
        "train_images": 0,
        "completed": False,
    }


def train(cfg, labels, splits, state: dict, checkpoint_dir: Path, on_gpu: bool, callbacks) -> EpochTracker:
    """paddle.Model.fit over the epochs ``state`` has not done yet; returns the tracker (history, best)."""
    params, seed = cfg.train_paddle, int(cfg.seed)
    input_size, batch_size, total_epochs = int(params.input_size), int(params.batch_size), int(params.epochs)
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

    net = DoveNet(labels.num_classes)
    # The output conv reads the decoders' un-normalised residual sums (std ~20): a plain Adam step there
    # moves the class scores ~100x more than elsewhere, which makes the loss jump. Damp its steps.
    for param in net.output_conv.parameters():
        param.optimize_attr["learning_rate"] = float(params.head_lr_scale)
    optimizer = build_optimizer(params, net.parameters(), total_epochs * len(train_loader))
    done = len(state["history"])
    average = WeightAverage(float(params.weight_average))
    if done:
        net.set_state_dict(paddle.load(str(checkpoint_dir / "model.pdparams")))
        optimizer.set_state_dict(paddle.load(str(checkpoint_dir / "optimizer.pdopt")))
        state["_best_weights"] = paddle.load(str(checkpoint_dir / "best.pdparams"))
        if (checkpoint_dir / "average.pdparams").is_file():
            average = WeightAverage(
                average.decay, paddle.load(str(checkpoint_dir / "average.pdparams")), int(state.get("average_steps", 0))
            )
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


def run(cfg, callbacks=()) -> dict:
    """Train DoveNet per cfg.train_paddle. ``callbacks``: extra paddle callbacks (a test interrupts with one)."""
    cfg, adaptations, _ = fit_to_data(cfg, distributed.world_size())
    if adaptations and distributed.is_main_process():
        print(summary_line(STAGE, adaptations), flush=True)
    params = cfg.train_paddle
    labels = read_labels(cfg.data.labels)
    splits = {name: read_split(cfg, name) for name in ("train", "val")}
    for name, samples in splits.items():
        check_samples(samples, labels.num_classes, split_file(cfg, name))
    paths = output_paths(cfg)
    input_size = int(params.input_size)

    on_gpu = configure_device(params)
    seed = int(cfg.seed)
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)

    data_fingerprint = fingerprint(cfg, labels, splits["train"] + splits["val"])
    state = load_checkpoint(paths["checkpoint_dir"], data_fingerprint)
    resumed_from = len(state["history"]) if state else 0
    if not distributed.is_main_process():  # launched with others: train my share, rank 0 writes
        with paddle.utils.unique_name.guard():
            train(
                cfg,
                labels,
                splits,
                state or new_state(data_fingerprint, ""),
                paths["checkpoint_dir"],
                on_gpu,
                callbacks,
            )
        return {"rank": distributed.rank(), "outputs": "written by the main process (rank 0)"}

    model_name = registered_model_name(cfg, "paddle")
    with training_run(cfg, STAGE, paths["run_id_file"], resume_run_id=state and state["run_id"]) as active:
        log_adaptations(adaptations)
        state = state or new_state(data_fingerprint, active.info.run_id)
        # Fresh parameter names (conv2d_0.w_0, ...) whatever ran before in this process: the optimizer
        # checkpoint is keyed by them.
        with paddle.utils.unique_name.guard():
            tracker = train(cfg, labels, splits, state, paths["checkpoint_dir"], on_gpu, callbacks)
        best_net = DoveNet(labels.num_classes)
        best_net.set_state_dict(tracker.best_weights)
        best_net.eval()

        per_epoch = int(state.get("iters_per_epoch", 1))
        metrics = training_metrics(
            num_params=count_parameters(best_net),
            best_scores=state.get("best_scores"),
            class_names=labels.names,
            iters=len(state["history"]) * per_epoch,
            best_iter=state["best_epoch"] * per_epoch,
            resumed_from_iter=resumed_from * per_epoch,
            iters_per_epoch=per_epoch,
            train_seconds=state["train_seconds"],
            train_step_seconds=state["train_step_seconds"],
            train_images=state["train_images"],
            input_size=input_size,
            crop_size=int(params.crop_size),
            batch_size=int(params.batch_size),
            device="gpu" if on_gpu else "cpu",
        )
        summary = model_summary(labels.num_classes, input_size)
        meta = ModelMeta((input_size, input_size), labels.names, tuple(params.mean), tuple(params.std), "DoveNet")
        with atomic_dir(paths["model_dir"]) as tmp:
            paddle.save(tracker.best_weights, str(tmp / "best.pdparams"))
            export(best_net, tmp, meta)
            write_text_atomic(tmp / "summary.txt", summary)
            # MLflow gets everything before the outputs go live: a logging failure leaves no new outputs.
            log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.log_text(summary, "model/summary.txt")
            mlflow.log_artifact(str(tmp / META_NAME), "model")
            mlflow.paddle.log_model(
                best_net,
                name="paddle_model",
                registered_model_name=model_name,
                input_spec=[InputSpec([None, 3, input_size, input_size], "float32", "image")],
                pip_requirements=LOADS_WITH,
            )
        write_plots(paths["plots"], state["history"])
        write_json_atomic(paths["metrics"], metrics)
        state["completed"] = True  # a rerun now trains afresh instead of "resuming" a finished run
        write_json_atomic(paths["checkpoint_dir"] / "state.json", state)

    return {"model_dir": str(paths["model_dir"]), "run_id": active.info.run_id, **metrics}


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


if __name__ == "__main__":
    # params checked and fitted to the data first; train_paddle.distributed.nproc > 1: under Paddle's launcher
    distributed.relaunch_if_configured(STAGE, check=lambda cfg: fit_to_data(cfg)[2])
    stage_main(run)
