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
mlflow.registered_models.serving; that version goes into export_<model>.json (``serving_model``), and the
served model's alias ``champion`` (report moves it) is the champion. dvc.yaml runs one export stage per
model (export@paddle, ...). The pieces: stages.models.onnx_conversion, stages.prediction.engine_check,
stages.tracking.logged_models.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir, trainer_output_paths, write_json_atomic, write_text_atomic
from stages.data.images import read_rgb
from stages.data.split_lists import read_split
from stages.models.inference_model import DEPLOY_NAME, META_NAME, deploy_config, model_files, read_meta
from stages.models.onnx_conversion import convert_to_onnx, record_onnx
from stages.models.onnx_model import MAX_OPSET, MIN_OPSET, ONNX_NAME
from stages.prediction.engine_check import check_onnx, disagreements
from stages.tracking.logged_models import log_serving_model, log_to_training_run
from stages.tracking.registry import registered_model_name
from stages.tracking.runs import finished_run_client


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
    if int(params.serving.max_image_pixels) < 1:
        raise StageError(f"export.serving.max_image_pixels must be >= 1, got {params.serving.max_image_pixels}")


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
            metrics["serving_model"] = log_serving_model(cfg, client, training_run, tmp, meta, name, model_dir)
    write_json_atomic(Path(cfg.paths.metrics_dir) / f"export_{name}.json", metrics)
    return metrics


if __name__ == "__main__":
    stage_main(run)
