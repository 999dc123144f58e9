"""train_paddle: the tutorial's DoveNet on paddle.Model.prepare/fit, tracked in MLflow, resumable.

Reads the train/val split lists, trains with validation mIoU every epoch, keeps the best weights, and
writes models/paddle/ (best weights, an exported inference model, meta.json for predict), the metrics
JSON, the per-epoch plot CSV and the MLflow run-id file. After every epoch the full training state goes
to checkpoints/paddle/, so a killed run, rerun with the same inputs, continues where it stopped.

The pieces live in stages.training: the params checked and fitted to the data, and the fingerprint of
the inputs (``dovenet_inputs``); the fit (``dovenet_fit``: its ``loss``, ``validation_metric``,
``optimizer``, ``weight_average`` and per-epoch ``epoch_tracker``); the checkpoint (``dovenet_checkpoint``)
and the outputs both trainers write (``model_outputs``).
"""

from __future__ import annotations

from pathlib import Path

import paddle

from stages.common.config import stage_main
from stages.common.outputs import trainer_output_paths, write_text_atomic
from stages.data.labels import read_labels
from stages.data.split_lists import check_samples, read_split, split_file
from stages.models.inference_model import ModelMeta
from stages.tracking.registry import registered_model_name
from stages.tracking.runs import training_run
from stages.training import distributed, launcher
from stages.training.adaptation import log_adaptations, summary_line
from stages.training.device import configure_device
from stages.training.dovenet_checkpoint import load_checkpoint, mark_completed, new_state
from stages.training.dovenet_fit import best_network, final_metrics, model_summary, seed_everything, train
from stages.training.dovenet_inputs import STAGE, fingerprint, fit_to_data
from stages.training.model_outputs import publish_model


def output_paths(cfg) -> dict[str, Path]:
    return trainer_output_paths(cfg, "paddle")


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
    seed_everything(int(cfg.seed))
    inputs = fingerprint(cfg, labels, splits["train"] + splits["val"])
    state = load_checkpoint(paths["checkpoint_dir"], inputs)
    resumed_from = len(state["history"]) if state else 0
    if not distributed.is_main_process():  # launched with others: train my share, rank 0 writes
        train(cfg, labels, splits, state or new_state(inputs, ""), paths["checkpoint_dir"], on_gpu, callbacks)
        return {"rank": distributed.rank(), "outputs": "written by the main process (rank 0)"}

    model_name = registered_model_name(cfg, "paddle")
    with training_run(cfg, STAGE, paths["run_id_file"], resume_run_id=state and state["run_id"]) as active:
        log_adaptations(adaptations)
        state = state or new_state(inputs, active.info.run_id)
        tracker = train(cfg, labels, splits, state, paths["checkpoint_dir"], on_gpu, callbacks)
        best_net = best_network(labels.num_classes, tracker.best_weights)
        metrics = final_metrics(state, best_net, labels.names, params, resumed_from, on_gpu)
        summary = model_summary(labels.num_classes, input_size)
        meta = ModelMeta((input_size, input_size), labels.names, tuple(params.mean), tuple(params.std), "DoveNet")

        def write_files(folder):
            paddle.save(tracker.best_weights, str(folder / "best.pdparams"))
            write_text_atomic(folder / "summary.txt", summary)

        publish_model(
            paths,
            best_net,
            meta,
            metrics,
            state["history"],
            logged_name="paddle_model",
            registered_name=model_name,
            write_files=write_files,
            texts={"model/summary.txt": summary},
        )
        mark_completed(paths["checkpoint_dir"], state)

    return {"model_dir": str(paths["model_dir"]), "run_id": active.info.run_id, **metrics}


if __name__ == "__main__":
    # params checked and fitted to the data first; train_paddle.distributed.nproc > 1: under Paddle's launcher
    launcher.relaunch_if_configured(STAGE, check=lambda cfg: fit_to_data(cfg)[2])
    stage_main(run)
