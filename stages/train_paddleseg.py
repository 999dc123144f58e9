"""train_paddleseg: a PaddleSeg model (UNet by default) trained from a PaddleSeg config (the tutorial's second
method), resumable.

The PaddleSeg config template (train_paddleseg.config, default conf/paddleseg/unet.yml) is filled from
params and the labels file, then PaddleSeg builds the model, datasets, transforms, loss and optimizer
from it; stages.training.paddleseg_loop runs them (validation every eval_interval iterations, the best model
by val mIoU, iteration checkpoints in checkpoints/paddleseg/). Outputs mirror train_paddle's:
models/paddleseg/ (best weights, exported inference model, meta.json, the resolved PaddleSeg config,
mlflow_run.json), metrics/train_paddleseg.json and plots/train_paddleseg.csv. A killed run, rerun with
the same inputs, continues from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import mlflow
import mlflow.paddle
import paddle
from omegaconf import DictConfig, OmegaConf
from paddle.static import InputSpec

import stages.training.paddleseg_compat
import stages.training.paddleseg_loop
import stages.training.photo_cache
from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir, trainer_output_paths, write_json_atomic, write_text_atomic
from stages.data.labels import read_labels
from stages.data.split_lists import check_samples, read_split, split_file
from stages.models.inference_model import META_NAME, ModelMeta, export
from stages.models.paddleseg_model import CONFIG_NAME
from stages.tracking.registry import registered_model_name
from stages.tracking.runs import log_metrics, training_run
from stages.training import distributed
from stages.training.adaptation import (
    Adaptation,
    adapted_config,
    fit_batch,
    fit_interval,
    fit_processes,
    log_adaptations,
    summary_line,
)
from stages.training.distributed import LaunchSettings
from stages.training.paddleseg_loop import (
    BEST_DIR,
    STATE_NAME,
    LoopSettings,
    build,
    dump_config,
    latest_state,
    new_state,
    normalisation,
    resolve_config,
    restore,
    train,
)
from stages.training.photo_cache import MB
from stages.training.pretrained import check_pretrained
from stages.training.summary import training_metrics, validation_metrics, write_plots

STAGE = "train_paddleseg"
# Params that change how fast training runs, not what it computes: a checkpoint stays valid across them.
RUNTIME_PARAMS = ("num_workers", "num_threads", "cache_mb")
LOADS_WITH = mlflow.paddle.get_default_pip_requirements()  # Paddle only (see train_paddle.LOADS_WITH)


def output_paths(cfg) -> dict[str, Path]:
    return trainer_output_paths(cfg, "paddleseg")


def check_params(params) -> None:
    for key in ("iters", "batch_size", "eval_interval", "log_interval", "input_size", "crop_size"):
        if int(params[key]) < 1:
            raise StageError(f"train_paddleseg.{key} must be >= 1, got {params[key]}")
    if not 0 <= float(params.weight_average) < 1:
        raise StageError(f"train_paddleseg.weight_average must be in [0, 1) (0: off), got {params.weight_average}")


def fit_to_data(cfg, processes: int | None = None) -> tuple[DictConfig, list[Adaptation], LaunchSettings]:
    """Check the params, then adapt what the train split cannot meet (stages.training.adaptation): returns
    (the config to train with, the adaptations, the launch settings). ``processes``: how many train
    together (None: as many as train_paddleseg.distributed starts)."""
    params = cfg.train_paddleseg
    check_params(params)
    samples = len(read_split(cfg, "train"))
    launch, adaptations = fit_processes(STAGE, params.get("distributed"), samples)
    processes = launch.nproc * launch.nnodes if processes is None else processes
    iters = int(params.iters)
    adaptations += [
        change
        for change in (
            fit_batch(STAGE, int(params.batch_size), samples, processes),
            fit_interval(STAGE, "eval_interval", int(params.eval_interval), iters),
            fit_interval(STAGE, "log_interval", int(params.log_interval), iters),
        )
        if change
    ]
    return adapted_config(cfg, adaptations), adaptations, launch


def resolved_document(cfg, labels=None) -> dict:
    """The PaddleSeg config template filled from params and the labels file."""
    labels = labels or read_labels(cfg.data.labels)
    return resolve_config(
        cfg.train_paddleseg.config, cfg, {"labels": {"num_classes": labels.num_classes, "names": list(labels.names)}}
    )


def check_before_start(cfg) -> LaunchSettings:
    """What the main checks before launching processes: params fitted to the data, pretrained weights."""
    cfg, _, launch = fit_to_data(cfg)
    check_pretrained(resolved_document(cfg), cfg.train_paddleseg.config)
    return launch


def fingerprint(cfg, resolved_config: str, labels, samples) -> str:
    """What a checkpoint was made from: the resolved PaddleSeg config, params, labels, data bytes and code."""
    params = {
        k: v for k, v in OmegaConf.to_container(cfg.train_paddleseg, resolve=True).items() if k not in RUNTIME_PARAMS
    }
    digest = hashlib.sha256(
        json.dumps(
            {"params": params, "seed": int(cfg.seed), "labels": labels.names, "config": resolved_config}, sort_keys=True
        ).encode()
    )
    for name in ("train", "val"):
        digest.update(split_file(cfg, name).read_bytes())
    for sample in samples:
        digest.update(Path(sample.image).read_bytes())
        digest.update(Path(sample.label).read_bytes())
    for module in (stages.training.paddleseg_compat, stages.training.paddleseg_loop, stages.training.photo_cache):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def resumable_state(checkpoint_dir: Path, expected_fingerprint: str, clear: bool = True) -> tuple[Path, dict] | None:
    """The newest checkpoint when it is unfinished and made from the same inputs; else None, and with
    ``clear`` the folder is emptied (stale iterations would break keep_checkpoint_max and the best model)."""
    found = latest_state(checkpoint_dir)
    if found is not None:
        folder, state = found
        if state.get("fingerprint") == expected_fingerprint and not state.get("completed"):
            return folder, state
        if clear:
            reason = (
                "finished" if state.get("fingerprint") == expected_fingerprint else "made from other params/data/code"
            )
            print(f"{STAGE}: {checkpoint_dir} holds a {reason} run; training from scratch")
    if clear and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    return None


def prepare(document: dict, resumed: tuple[Path, dict] | None, cache_bytes: int):
    """PaddleSeg's parts built from the config, with the checkpoint's weights and optimizer state if resuming."""
    parts = build(document, cache_bytes)
    if resumed:
        folder, state = resumed
        restore(parts, folder, state["param_names"])
        print(f"{STAGE}: resuming after iteration {state['iter']} of {parts.config.iters} from {folder}")
    return parts


def input_size_of(document: dict, params) -> tuple[int, int]:
    """(height, width) the model sees at validation and predict time: the val Resize target, else input_size."""
    for transform in document.get("val_dataset", {}).get("transforms", []):
        if transform.get("type") == "Resize" and "target_size" in transform:
            width, height = transform["target_size"]
            return int(height), int(width)
    return int(params.input_size), int(params.input_size)


def choose_device() -> str:
    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return "gpu"
    return "cpu"


def count_parameters(model) -> dict:
    total = sum(int(p.numel()) for p in model.parameters())
    trainable = sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)
    return {"total": total, "trainable": trainable}


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
    processes, batch = distributed.world_size(), int(document["batch_size"])
    if not processes <= batch <= len(splits["train"]):  # a template that does not take the adapted batch size
        raise StageError(
            f"{params.config}: batch_size {batch} does not fit {len(splits['train'])} training photos "
            f"in {processes} process(es); write batch_size: ${{train_paddleseg.batch_size}} there"
        )

    device = paddle.set_device(choose_device())
    on_gpu = "gpu" in str(device)
    if not on_gpu:  # several processes on one machine share its cores
        paddle.base.core.set_num_threads(distributed.cpu_threads(int(params.num_threads)))

    run_fingerprint = fingerprint(cfg, resolved_text, labels, splits["train"] + splits["val"])
    settings = LoopSettings(
        iters=int(document["iters"]),
        batch_size=int(document["batch_size"]),
        eval_interval=int(params.eval_interval),
        log_interval=int(params.log_interval),
        keep_checkpoint_max=int(params.keep_checkpoint_max),
        num_workers=int(params.num_workers),
        seed=int(cfg.seed),
        weight_average=float(params.weight_average),
    )
    if not distributed.is_main_process():  # launched with others: train my share, the main process writes
        distributed.barrier()  # the main process has cleared stale checkpoints
        resumed = resumable_state(paths["checkpoint_dir"], run_fingerprint, clear=False)
        parts = prepare(document, resumed, int(params.cache_mb) * MB)
        train(parts, settings, paths["checkpoint_dir"], resumed[1] if resumed else new_state())
        return {"rank": distributed.rank(), "outputs": "written by the main process (rank 0)"}
    resumed = resumable_state(paths["checkpoint_dir"], run_fingerprint)
    distributed.barrier()
    resume_run_id = resumed[1]["run_id"] if resumed else None

    model_name = registered_model_name(cfg, "paddleseg")
    with training_run(cfg, STAGE, paths["run_id_file"], resume_run_id=resume_run_id) as active:
        log_adaptations(adaptations)
        parts = prepare(document, resumed, int(params.cache_mb) * MB)
        if resumed:
            state = resumed[1]
        else:
            state = new_state(fingerprint=run_fingerprint)
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
        metrics = training_metrics(
            num_params=count_parameters(parts.model),
            best_scores=state["best_scores"],
            class_names=labels.names,
            iters=state["iter"],
            best_iter=state["best_iter"],
            resumed_from_iter=resumed_from,
            iters_per_epoch=len(parts.train_dataset) // settings.batch_size,
            train_seconds=state["train_seconds"],
            train_step_seconds=state["train_step_seconds"],
            train_images=state["train_images"],
            input_size=input_size[0],
            crop_size=int(params.crop_size),
            batch_size=settings.batch_size,
            device="gpu" if on_gpu else "cpu",
        )
        architecture = str(document["model"]["type"])
        mean, std = normalisation(document)
        meta = ModelMeta(input_size, labels.names, mean, std, architecture)

        with atomic_dir(paths["model_dir"]) as tmp:
            best_file = paths["checkpoint_dir"] / BEST_DIR / "model.pdparams"
            parts.model.set_state_dict(paddle.load(str(best_file)))
            shutil.copyfile(best_file, tmp / "model.pdparams")  # PaddleSeg's name: load_entire_model reads it
            write_text_atomic(tmp / CONFIG_NAME, resolved_text)
            export(parts.model, tmp, meta)
            # MLflow gets the same files before they go live, so a logging failure leaves no new outputs.
            log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.log_artifact(str(tmp / META_NAME), "model")
            mlflow.paddle.log_model(
                parts.model,
                name="paddleseg_model",
                registered_model_name=model_name,
                input_spec=[InputSpec([None, 3, *input_size], "float32", "image")],
                pip_requirements=LOADS_WITH,
            )
        write_plots(paths["plots"], state["history"])
        write_json_atomic(paths["metrics"], metrics)
        state["completed"] = True  # a rerun now trains afresh instead of "resuming" a finished run
        write_json_atomic(paths["checkpoint_dir"] / f"iter_{state['iter']}" / STATE_NAME, state)

    return {"model_dir": str(paths["model_dir"]), "run_id": active.info.run_id, **metrics}


if __name__ == "__main__":
    # params checked and fitted to the data first; train_paddleseg.distributed.nproc > 1: under Paddle's launcher
    distributed.relaunch_if_configured(STAGE, check=check_before_start)
    stage_main(run)
