"""train_paddleseg: a PaddleSeg model (UNet by default) trained from a PaddleSeg config (the tutorial's second
method), resumable.

The PaddleSeg config template (train_paddleseg.config, default conf/paddleseg/unet.yml) is filled from
params and the labels file, then PaddleSeg builds the model, datasets, transforms, loss and optimizer
from it; stages.training.paddleseg_loop runs them (validation every eval_interval iterations, the best model
by val mIoU, iteration checkpoints in checkpoints/paddleseg/). Outputs mirror train_paddle's:
models/paddleseg/ (best weights, exported inference model, meta.json, the resolved PaddleSeg config,
mlflow_run.json), metrics/train_paddleseg.json and plots/train_paddleseg.csv. A killed run, rerun with
the same inputs, continues from its last checkpoint.

The pieces live in stages.training: the params checked and fitted to the data, and the fingerprint of
the inputs (``paddleseg_inputs``); the config and what PaddleSeg builds from it (``paddleseg_config``), its
datasets (``paddleseg_data``), the loop (``paddleseg_loop``), the checkpoints (``paddleseg_checkpoint``)
and the outputs both trainers write (``model_outputs``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import paddle

from stages.common.config import stage_main
from stages.common.outputs import trainer_output_paths, write_text_atomic
from stages.data.labels import read_labels
from stages.data.split_lists import check_samples, read_split, split_file
from stages.models.inference_model import ModelMeta
from stages.models.paddleseg_model import CONFIG_NAME
from stages.tracking.registry import registered_model_name
from stages.tracking.runs import log_metrics, training_run
from stages.training import distributed, launcher
from stages.training.adaptation import log_adaptations, summary_line
from stages.training.device import use_device
from stages.training.model_outputs import publish_model
from stages.training.paddleseg_checkpoint import (
    best_weights_file,
    build_resumed,
    mark_completed,
    new_state,
    resumable_state,
)
from stages.training.paddleseg_config import (
    STAGE,
    check_batch_size,
    dump_config,
    input_size_of,
    normalisation,
    resolved_document,
)
from stages.training.paddleseg_inputs import check_before_start, fingerprint, fit_to_data
from stages.training.paddleseg_loop import final_metrics, loop_settings, seed_everything, train
from stages.training.photo_cache import MB
from stages.training.pretrained import check_pretrained
from stages.training.summary import validation_metrics


def output_paths(cfg) -> dict[str, Path]:
    return trainer_output_paths(cfg, "paddleseg")


def run(cfg) -> dict:
    cfg, adaptations, _ = fit_to_data(cfg, distributed.world_size())
    if adaptations and distributed.is_main_process():
        print(summary_line(STAGE, adaptations), flush=True)
    params = cfg.train_paddleseg
    labels = read_labels(cfg.data.labels)
    splits = {name: read_split(cfg, name) for name in ("train", "val")}
    for name, samples in splits.items():
        check_samples(samples, labels.num_classes, split_file(cfg, name))
    paths = output_paths(cfg)
    document = resolved_document(cfg, labels)
    if distributed.is_main_process():
        check_pretrained(document, params.config)
    resolved_text = dump_config(document)
    check_batch_size(document, params.config, distributed.world_size(), len(splits["train"]))

    on_gpu = use_device(distributed.cpu_threads(int(params.num_threads)))  # processes on one machine share it
    inputs = fingerprint(cfg, resolved_text, labels, splits["train"] + splits["val"])
    settings = loop_settings(document, params, int(cfg.seed))
    cache_bytes = int(params.cache_mb) * MB
    if not distributed.is_main_process():  # launched with others: train my share, the main process writes
        distributed.barrier()  # the main process has cleared stale checkpoints
        resumed = resumable_state(paths["checkpoint_dir"], inputs, clear=False)
        seed_everything(settings.seed)  # the model's initial weights: the same seed, the same model
        parts = build_resumed(document, resumed, cache_bytes)
        train(parts, settings, paths["checkpoint_dir"], resumed[1] if resumed else new_state())
        return {"rank": distributed.rank(), "outputs": "written by the main process (rank 0)"}
    resumed = resumable_state(paths["checkpoint_dir"], inputs)
    distributed.barrier()
    resume_run_id = resumed[1]["run_id"] if resumed else None

    model_name = registered_model_name(cfg, "paddleseg")
    with training_run(cfg, STAGE, paths["run_id_file"], resume_run_id=resume_run_id) as active:
        log_adaptations(adaptations)
        seed_everything(settings.seed)  # the model's initial weights: the same seed, the same model
        parts = build_resumed(document, resumed, cache_bytes)
        if resumed:
            state = resumed[1]
        else:
            state = new_state(fingerprint=inputs)
            mlflow.log_text(resolved_text, f"config/{CONFIG_NAME}")
        state["run_id"] = active.info.run_id
        resumed_from = int(state["iter"])

        def on_eval(step: int, scores: dict, row: dict) -> None:
            log_metrics(validation_metrics(scores, labels.names, row["epoch"]), step=step)

        state = train(
            parts,
            settings,
            paths["checkpoint_dir"],
            state,
            on_log=lambda step, values: log_metrics(values, step=step),
            on_eval=on_eval,
        )

        input_size = input_size_of(document, params)
        metrics = final_metrics(state, parts, settings, labels.names, input_size[0], params, resumed_from, on_gpu)
        meta = ModelMeta(input_size, labels.names, *normalisation(document), str(document["model"]["type"]))
        best_file = best_weights_file(paths["checkpoint_dir"])
        parts.model.set_state_dict(paddle.load(str(best_file)))

        def write_files(folder):
            shutil.copyfile(best_file, folder / "model.pdparams")  # PaddleSeg's name: load_entire_model reads it
            write_text_atomic(folder / CONFIG_NAME, resolved_text)

        publish_model(
            paths,
            parts.model,
            meta,
            metrics,
            state["history"],
            logged_name="paddleseg_model",
            registered_name=model_name,
            write_files=write_files,
        )
        mark_completed(paths["checkpoint_dir"], state)

    return {"model_dir": str(paths["model_dir"]), "run_id": active.info.run_id, **metrics}


if __name__ == "__main__":
    # params checked and fitted to the data first; train_paddleseg.distributed.nproc > 1: under Paddle's launcher
    launcher.relaunch_if_configured(STAGE, check=check_before_start)
    stage_main(run)
