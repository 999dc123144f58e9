"""export: each trained model as a deployable folder (Paddle Inference, PaddleSeg's deploy.yaml, ONNX), checked.

For every model in export.models (folders under paths.models_dir, as the trainers wrote them) it writes
<paths.exports_dir>/<model>/:
  inference.json, inference.pdiparams  the trainer's Paddle Inference model (any batch, height and width)
  meta.json                            input size, class names, normalisation (what predict reads)
  deploy.yaml                          the same in PaddleSeg's deploy format (PaddleSeg, FastDeploy)
  model.onnx                           paddle2onnx's conversion at export.opset, dynamic batch/height/width
When an op converts only at a fixed input size (adaptive pooling: PP-LiteSeg), a PaddleSeg model is traced
again at its input size from its trainer's folder and converted with a static height and width (predict
resizes every photo to that size anyway). When no conversion works, the folder has no model.onnx: one
warning line says why, meta.json and the metrics record it, and predict uses Paddle Inference for it.
The stage checks each conversion on the first export.check.images photos of the test split: Paddle Inference and
onnxruntime must give logits within export.check.max_logit_diff (relative to the largest logit, at least 1)
and the same class ids (at each photo's full size, as predict makes them) on at least
export.check.min_mask_agreement of the pixels, or the stage fails and writes nothing. The figures go to
<paths.metrics_dir>/export_<model>.json and to the model's MLflow training run, with the ONNX model
(mlflow.onnx), next to the Paddle one. The run also gets the served model, photos in and masks out
(stages.prediction.photo_segmenter on the ONNX model), registered as a new version of
mlflow.registered_models.serving; that version goes into export_<model>.json (``serving_model``) and report
points the serving model's alias ``champion`` at the champion's. dvc.yaml runs one export stage per model
(export@paddle, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir, trainer_output_paths, write_json_atomic, write_text_atomic
from stages.data.images import read_rgb
from stages.data.split_lists import read_split
from stages.models.inference_model import (
    DEPLOY_NAME,
    META_NAME,
    Predictor,
    deploy_config,
    model_files,
    preprocess,
    read_meta,
)
from stages.models.onnx_model import (
    MAX_OPSET,
    MIN_OPSET,
    ONNX_NAME,
    ConversionError,
    OnnxPredictor,
    convert,
    input_shape,
    opset_of,
)
from stages.models.paddleseg_model import can_rebuild, save_static
from stages.prediction.masks import predict_masks
from stages.prediction.photo_segmenter import DEPLOY_FILES, ServingLimits, limits_problem, pyfunc_arguments
from stages.training.tracking import finished_run_client, registered_model_name

ONNX_MODEL_NAME = "onnx_model"  # beside the trainers' paddle_model / paddleseg_model in the training run
SERVING_MODEL_NAME = "photo_segmenter"  # the served model (photos in, masks out), in the same run


def run(cfg) -> dict:
    params = cfg.export
    check_params(params)
    registered_model_name(cfg, "serving")  # named in params, or a StageError before anything runs
    names = list(params.models)
    sources = {name: trainer_output_paths(cfg, name) for name in names}
    problems = []
    for name, paths in sources.items():
        try:
            model_files(paths["model_dir"])
            read_meta(paths["model_dir"])
        except StageError as err:
            problems.append(f"model {name!r}: {err}")
    if problems:
        raise StageError("nothing to export (train the models first):\n  " + "\n  ".join(problems))
    photos = check_photos(cfg, int(params.check.images))
    runs = {name: finished_run_client(cfg, paths["run_id_file"]) for name, paths in sources.items()}

    results = {}
    for name in tqdm(names, desc="export", unit="model", file=sys.stderr, disable=len(names) < 2):
        results[name] = export_model(cfg, name, sources[name]["model_dir"], photos, *runs[name])
    return {"exports_dir": str(cfg.paths.exports_dir), "models": results}


def check_params(params) -> None:
    if not params.models:
        raise StageError("export.models is empty: name at least one model folder under paths.models_dir")
    if not MIN_OPSET <= int(params.opset) <= MAX_OPSET:
        raise StageError(
            f"export.opset must be within {MIN_OPSET}..{MAX_OPSET} (paddle2onnx 2.1), "
            f"got {params.opset}; 13 suits most runtimes"
        )
    if int(params.check.images) < 1:
        raise StageError(f"export.check.images must be >= 1, got {params.check.images}")
    if not float(params.check.max_logit_diff) > 0:
        raise StageError(f"export.check.max_logit_diff must be > 0, got {params.check.max_logit_diff}")
    if not 0 < float(params.check.min_mask_agreement) <= 1:
        raise StageError(f"export.check.min_mask_agreement must be in (0, 1], got {params.check.min_mask_agreement}")
    if problem := limits_problem(params.serving):
        raise StageError(problem)


def check_photos(cfg, count: int) -> list[tuple[str, np.ndarray]]:
    """The first ``count`` photos of the test split (fixed, so reruns check the same ones)."""
    samples = read_split(cfg, "test")[:count]
    if not samples:
        raise StageError(f"{cfg.data.splits_dir}/test.txt lists no photos to check the exports on")
    photos = []
    for sample in samples:
        try:
            photos.append((sample.stem, read_rgb(sample.image)))
        except OSError as err:
            raise StageError(f"{sample.image}: unreadable test photo ({err}); rerun convert_json") from None
    return photos


def export_model(cfg, name: str, model_dir: Path, photos, client, training_run) -> dict:
    params = cfg.export
    opset = int(params.opset)
    model_file, params_file = model_files(model_dir)
    with atomic_dir(Path(cfg.paths.exports_dir) / name) as tmp:
        for source in (model_file, params_file, model_dir / META_NAME):
            shutil.copyfile(source, tmp / source.name)
        meta = read_meta(tmp)
        conversion = convert_to_onnx(tmp, model_dir, meta.input_size, opset, name)
        metrics = {"model": name, "architecture": meta.architecture}
        if conversion["onnx_conversion"] is not None:
            figures = check_onnx(tmp, photos, params)
            failures = disagreements(figures, params)
            if failures and conversion["onnx_conversion"] == "static":  # a best effort: Paddle Inference instead
                (tmp / ONNX_NAME).unlink()
                height, width = meta.input_size
                conversion = {
                    "onnx_conversion": None,
                    "onnx_missing": (
                        f"{conversion['dynamic_conversion_error']}; converted at a static {height}x{width}, it "
                        f"disagrees with Paddle Inference on {len(photos)} test photos: " + "; ".join(failures)
                    ),
                }
            elif failures:
                raise StageError(
                    f"model {name!r}: ONNX model disagrees with Paddle Inference on "
                    f"{len(photos)} test photos: " + "; ".join(failures)
                )
            else:
                metrics.update(conversion, **figures, check_passed=True)
        if conversion["onnx_conversion"] is None:
            metrics.update(conversion, check_passed=None)  # nothing to check: Paddle Inference is the only engine
            print(
                f"export: warning: {conversion['onnx_missing']}; {name} is exported for Paddle Inference only "
                "(predict uses it for this model; it is not served)",
                file=sys.stderr,
                flush=True,
            )
        has_onnx = conversion["onnx_conversion"] is not None
        shape = metrics["onnx_input_shape"] if has_onnx else [None, 3, None, None]
        record_onnx(tmp, conversion, shape)
        write_text_atomic(
            tmp / DEPLOY_NAME,
            yaml.safe_dump(deploy_config(meta, model_file.name, params_file.name, shape), sort_keys=False),
        )
        # MLflow gets everything before the outputs go live: a logging failure leaves no new outputs.
        log_to_training_run(client, training_run, tmp / ONNX_NAME if has_onnx else None, meta, metrics)
        if has_onnx:  # a model only Paddle Inference can run has nothing to serve on onnxruntime
            metrics["serving_model"] = log_serving_model(cfg, client, training_run, tmp, meta)
    write_json_atomic(Path(cfg.paths.metrics_dir) / f"export_{name}.json", metrics)
    return metrics


def check_onnx(deploy_dir: Path, photos, params) -> dict:
    """The ONNX model's figures: what it is, and how it compares with Paddle Inference on ``photos``."""
    onnx_path = deploy_dir / ONNX_NAME
    check = compare_engines(deploy_dir, photos)
    return {
        "opset": opset_of(onnx_path),
        "onnx_input_shape": input_shape(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        **check,
        "logit_tolerance": float(params.check.max_logit_diff) * max(1.0, check["max_abs_logit"]),
        "min_mask_agreement": float(params.check.min_mask_agreement),
    }


def disagreements(figures: dict, params) -> list[str]:
    failures = []
    if not figures["max_logit_diff"] <= figures["logit_tolerance"]:
        failures.append(
            f"max logit difference {figures['max_logit_diff']:.3g} > {figures['logit_tolerance']:.3g} "
            f"(export.check.max_logit_diff {params.check.max_logit_diff} x max(1, largest logit "
            f"{figures['max_abs_logit']:.3g}))"
        )
    if not figures["mask_agreement"] >= figures["min_mask_agreement"]:
        failures.append(
            f"class ids agree on {figures['mask_agreement']:.4%} of the pixels < "
            f"export.check.min_mask_agreement {figures['min_mask_agreement']:.4%}"
        )
    return failures


def convert_to_onnx(deploy_dir: Path, model_dir: Path, input_size, opset: int, name: str) -> dict:
    """model.onnx in ``deploy_dir``: dynamic height and width, else (an op needs fixed sizes) the model
    traced again at ``input_size``. Returns how: {"onnx_conversion": "dynamic" | "static" | None, ...}
    with the converter's one-line reasons."""
    try:
        convert(deploy_dir, deploy_dir / ONNX_NAME, opset, name)
        return {"onnx_conversion": "dynamic"}
    except ConversionError as err:
        dynamic = err
    if not dynamic.needs_static_shape:
        return {"onnx_conversion": None, "onnx_missing": str(dynamic)}
    height, width = input_size
    if not can_rebuild(model_dir):
        return {
            "onnx_conversion": None,
            "onnx_missing": f"{dynamic}; a static {height}x{width} conversion needs "
            "the model's PaddleSeg config and weights (train_paddleseg's)",
        }
    try:
        with tempfile.TemporaryDirectory(prefix="static-") as static_dir:
            save_static(model_dir, static_dir, input_size)
            convert(static_dir, deploy_dir / ONNX_NAME, opset, name)
    except StageError as err:
        static = str(err).removeprefix(f"model {name!r}: ")
        return {"onnx_conversion": None, "onnx_missing": f"{dynamic}; and at a static {height}x{width}: {static}"}
    return {"onnx_conversion": "static", "dynamic_conversion_error": str(dynamic)}


def record_onnx(deploy_dir: Path, conversion: dict, shape: list) -> None:
    """meta.json of the deploy folder says what model.onnx is, or why there is none (predict reads it)."""
    path = deploy_dir / META_NAME
    meta = json.loads(path.read_text())
    if conversion["onnx_conversion"] is None:
        meta["onnx"] = {"file": None, "missing": conversion["onnx_missing"]}
    else:
        meta["onnx"] = {"file": ONNX_NAME, "conversion": conversion["onnx_conversion"], "input_shape": shape}
    write_json_atomic(path, meta)


def compare_engines(deploy_dir: Path, photos) -> dict:
    """Paddle Inference against onnxruntime on the same photos: largest logit difference, class-id agreement."""
    threads = os.cpu_count() or 1
    engines = {
        "paddle": Predictor(deploy_dir, use_gpu=False, cpu_threads=threads),
        "onnxruntime": OnnxPredictor(deploy_dir, cpu_threads=threads),
    }
    meta = engines["paddle"].meta
    images = [rgb for _, rgb in photos]
    batch = np.stack([preprocess(rgb, meta) for rgb in images])
    logits = {engine: predictor.logits(batch) for engine, predictor in engines.items()}
    masks = {engine: predict_masks(predictor, images) for engine, predictor in engines.items()}
    agree = sum(int((a == b).sum()) for a, b in zip(masks["paddle"], masks["onnxruntime"]))
    total = sum(mask.size for mask in masks["paddle"])
    return {
        "check_images": [stem for stem, _ in photos],
        "max_logit_diff": float(np.abs(logits["paddle"] - logits["onnxruntime"]).max()),
        "max_abs_logit": float(np.abs(logits["paddle"]).max()),
        "mask_agreement": agree / total,
    }


def log_to_training_run(client, training_run, onnx_path: Path | None, meta, metrics: dict) -> None:
    """The check's figures and the ONNX model, added to the finished training run without reopening it
    (``onnx_path`` None: no ONNX model, only why)."""
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.entities import Metric
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    run_id = training_run.info.run_id
    client.set_tag(run_id, "onnx_conversion", str(metrics["onnx_conversion"]))
    if onnx_path is None:
        client.set_tag(run_id, "onnx_missing", metrics["onnx_missing"][:5000])  # MLflow's tag value limit
        return
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(f"export/{key}", float(metrics[key]), now, 0)
            for key in ("max_logit_diff", "logit_tolerance", "mask_agreement", "opset")
        ],
    )
    client.set_tag(run_id, "onnx_opset", str(metrics["opset"]))
    # The logged model's experiment is the run's (MLflow's default would be the current experiment).
    logged = client.create_logged_model(training_run.info.experiment_id, name=ONNX_MODEL_NAME, source_run_id=run_id)
    model = onnx.load(str(onnx_path))
    dims = tuple(-1 if dim is None else dim for dim in metrics["onnx_input_shape"])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), dims, model.graph.input[0].name)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (dims[0], meta.num_classes, -1, -1))]),
    )
    mlflow.onnx.log_model(
        model,
        name=ONNX_MODEL_NAME,
        run_id=run_id,
        model_id=logged.model_id,
        signature=signature,
        save_as_external_data=False,
        # stated, not inferred: MLflow would load the model in a subprocess (~10 s)
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        metadata={
            "opset": metrics["opset"],
            "class_names": list(meta.class_names),
            "input_size": list(meta.input_size),
            "mean": list(meta.mean),
            "std": list(meta.std),
        },
    )


def log_serving_model(cfg, client, training_run, deploy_dir: Path, meta) -> dict:
    """The photo segmenter on ``deploy_dir``'s ONNX model, logged to the finished training run and registered
    as a new version of mlflow.registered_models.serving. Returns its name, version and models:/ URI."""
    import mlflow.pyfunc
    from mlflow.models import Model

    name = registered_model_name(cfg, "serving")
    run_id = training_run.info.run_id
    logged = client.create_logged_model(training_run.info.experiment_id, name=SERVING_MODEL_NAME, source_run_id=run_id)
    with tempfile.TemporaryDirectory() as bundle:
        for file in DEPLOY_FILES:  # the ONNX model and its meta only: the server needs no Paddle files
            shutil.copyfile(deploy_dir / file, Path(bundle) / file)
        # Model.log is what mlflow.pyfunc.log_model calls; it also takes the run to log to.
        with warnings.catch_warnings():  # the signature says what the input is; an example would add nothing
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = Model.log(
                artifact_path=None,
                name=SERVING_MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=logged.model_id,
                registered_model_name=name,
                **pyfunc_arguments(bundle, meta, ServingLimits.from_params(cfg.export.serving)),
            )
    version = str(info.registered_model_version)
    return {"name": name, "version": version, "uri": f"models:/{name}/{version}"}


if __name__ == "__main__":
    stage_main(run)
