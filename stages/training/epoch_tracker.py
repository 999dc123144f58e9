"""train_paddle's per-epoch bookkeeping, as a paddle.Model.fit callback: the data order reseeded, the train
loss averaged, the weight average validated in place of the raw weights, then the history, MLflow's
metrics, the best weights and the checkpoint (stages.training.dovenet_checkpoint) after every validation."""

from __future__ import annotations

import time
from pathlib import Path

import paddle
from tqdm import tqdm

from stages.tracking.runs import log_metrics
from stages.training import distributed
from stages.training.dovenet_checkpoint import save_checkpoint
from stages.training.dovenet_inputs import STAGE
from stages.training.summary import validation_metrics
from stages.training.weight_average import WeightAverage


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
