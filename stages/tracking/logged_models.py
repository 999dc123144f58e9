"""The models export adds to a finished training run: the ONNX model (MLflow's onnx flavour, with the
check's figures) and the served photo segmenter, registered as a new version of
mlflow.registered_models.serving and labelled with the trainer's model and version it serves."""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from stages.common.config import StageError
from stages.common.outputs import trainer_output_paths
from stages.models.paddleseg_model import architecture_label
from stages.prediction.photo_segmenter import DEPLOY_FILES, pyfunc_arguments
from stages.tracking.registry import label_serving_version, read_registered_version, registered_model_name

ONNX_MODEL_NAME = "onnx_model"  # beside the trainers' paddle_model / paddleseg_model in the training run
SERVING_MODEL_NAME = "photo_segmenter"  # the served model (photos in, masks out), in the same run


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


def log_serving_model(cfg, client, training_run, deploy_dir: Path, meta, model: str, model_dir: Path) -> dict:
    """The photo segmenter on ``deploy_dir``'s ONNX model, logged to the finished training run and registered
    as a new version of mlflow.registered_models.serving, labelled with the trainer's model and version it
    serves. Returns its name, version and models:/ URI."""
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
                **pyfunc_arguments(bundle, meta, int(cfg.export.serving.max_image_pixels)),
            )
    version = str(info.registered_model_version)
    try:
        trained_as = "/".join(read_registered_version(trainer_output_paths(cfg, model)["run_id_file"]))
    except StageError:  # a training run that registered no version (made outside the trainers)
        trained_as = "unregistered"
    label_serving_version(client, name, version, model, architecture_label(model_dir), trained_as)
    return {"name": name, "version": version, "uri": f"models:/{name}/{version}"}
