"""A trained model's outputs, written alike by both trainers.

The model folder (the trainer's own files, the exported inference model and meta.json) is written aside
and replaced in one rename; MLflow gets its copy first (the numeric metrics, the trainer's texts,
meta.json, the logged and registered model), so a logging failure leaves no new outputs. Then the
per-validation plot CSV and the metrics JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import mlflow.paddle
from paddle.static import InputSpec

from stages.common.outputs import atomic_dir, write_json_atomic
from stages.models.inference_model import META_NAME, ModelMeta, export
from stages.tracking.runs import log_metrics
from stages.training.summary import write_plots

# The logged model is a Paddle static graph: loading it needs Paddle only. Saying so spares MLflow's
# requirement inference, which loads the model in a subprocess (13 s for a tiny model).
LOADS_WITH = mlflow.paddle.get_default_pip_requirements()


def publish_model(
    paths: dict[str, Path],
    network,
    meta: ModelMeta,
    metrics: dict,
    history: list[dict],
    *,
    logged_name: str,
    registered_name: str,
    write_files: Callable[[Path], None],
    texts: dict[str, str] | None = None,
) -> None:
    """``paths``: the trainer's output paths (stages.common.outputs.trainer_output_paths). ``write_files(folder)``
    writes the trainer's own files into the new model folder; ``texts``: MLflow artifact path -> text."""
    with atomic_dir(paths["model_dir"]) as tmp:
        write_files(tmp)
        export(network, tmp, meta)
        # MLflow gets everything before the outputs go live: a logging failure leaves no new outputs.
        log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        for artifact_file, text in (texts or {}).items():
            mlflow.log_text(text, artifact_file)
        mlflow.log_artifact(str(tmp / META_NAME), "model")
        mlflow.paddle.log_model(
            network,
            name=logged_name,
            registered_model_name=registered_name,
            input_spec=[InputSpec([None, 3, *meta.input_size], "float32", "image")],
            pip_requirements=LOADS_WITH,
        )
    write_plots(paths["plots"], history)
    write_json_atomic(paths["metrics"], metrics)
