"""predict: every trained model on the test split, scored at full resolution; or on any folder of photos.

Each model is loaded from its deploy folder (<paths.exports_dir>/<name>/, the export stage's) on predict.engine
(onnxruntime: model.onnx; paddle: Paddle Inference; the export stage checks that they agree) and
predicts in batches at its own input size. Masks go back to each photo's original size by resizing the
class *scores* bilinearly and taking the argmax there (PaddleSeg's own order in core.infer): boundaries
follow the scores between the coarse pixels instead of the staircase of nearest-neighbour class ids.

Outputs per model, under <paths.predictions_dir>/<model>/ (folder mode: <predict.output_dir>/<model>/):
  class_id/<name>.png                 P-mode class ids, labelme/VOC palette (same format as label.png)
  pseudo_color_prediction/<name>.png  RGB picture of the classes in that palette (PaddleSeg's folder name)
  added_prediction/<name>.jpg         the photo blended with that picture (PaddleSeg's added_prediction)
  metrics.json                        test split only: the scores, confusion matrix and per-sample scores
Folder mode also writes <predict.output_dir>/summary.json, listing the photos it skipped as unreadable.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir, write_json_atomic
from stages.data.images import read_label_png, read_rgb
from stages.data.labels import read_labels
from stages.data.split_lists import check_samples, read_split, split_file
from stages.evaluation.metrics import ConfusionMatrix
from stages.models.inference_model import META_NAME, MODEL_PREFIX, Predictor
from stages.models.onnx_model import ONNX_NAME, OnnxPredictor, onnx_missing
from stages.prediction.files import (
    IMAGE_SUFFIXES,
    METRICS_NAME,
    SUMMARY_NAME,
    list_images,
    output_names,
    read_photo,
    write_prediction,
)
from stages.prediction.masks import RESIZE_METHOD, batches, predict_masks


def run(cfg) -> dict:
    if cfg.predict.input_dir:
        return predict_folder(cfg)
    return predict_test_split(cfg)


# --- models ---------------------------------------------------------------------------------------

ENGINES = ("paddle", "onnxruntime")


def load_models(cfg) -> dict[str, Predictor | OnnxPredictor]:
    """One predictor on predict.engine per name in predict.models (Paddle Inference for a model the export
    stage could not convert to ONNX, with a warning); one StageError naming every missing file."""
    names = list(cfg.predict.models)
    engine = str(cfg.predict.engine)
    if engine not in ENGINES:
        raise StageError(f"predict.engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if not names:
        raise StageError("predict.models is empty: name at least one model folder under paths.exports_dir")
    problems, engines = [], {}
    for name in names:
        model_dir = Path(cfg.paths.exports_dir) / name
        wanted = [model_dir / META_NAME]
        engines[name] = engine
        if engine == "onnxruntime" and not (model_dir / ONNX_NAME).is_file() and onnx_missing(model_dir):
            print(
                f"predict: warning: model {name!r} has no ONNX model ({onnx_missing(model_dir)}); "
                "predicting with Paddle Inference",
                file=sys.stderr,
                flush=True,
            )
            engines[name] = "paddle"
        if engines[name] == "onnxruntime":
            wanted.append(model_dir / ONNX_NAME)
        else:
            wanted.append(model_dir / f"{MODEL_PREFIX}.pdiparams")
            if not (model_dir / f"{MODEL_PREFIX}.pdmodel").is_file():
                wanted.append(model_dir / f"{MODEL_PREFIX}.json")
        missing = [str(path) for path in wanted if not path.is_file()]
        if missing:
            problems.append(f"model {name!r}: missing {', '.join(missing)}")
    if problems:
        raise StageError(
            "no deployable model to predict with (train it, then export it: dvc repro export):\n  "
            + "\n  ".join(problems)
        )
    threads = int(cfg.predict.cpu_threads) or os.cpu_count() or 1
    engine_class = {"onnxruntime": OnnxPredictor, "paddle": Predictor}
    return {
        name: engine_class[engines[name]](Path(cfg.paths.exports_dir) / name, cpu_threads=threads) for name in names
    }


# --- the test split, scored ---------------------------------------------------------------------


def sample_scores(mask: np.ndarray, label: np.ndarray, num_classes: int) -> dict:
    """One photo's mIoU (over the classes present in its label or prediction, the headline convention of
    stages.evaluation.metrics) and pixel accuracy; both None when the photo has no scored pixel."""
    matrix = ConfusionMatrix(num_classes)
    matrix.update(mask, label)
    if not matrix.matrix.any():
        return {"mIoU": None, "acc": None}
    scores = matrix.scores()
    return {"mIoU": scores["mIoU"], "acc": scores["acc"]}


def named_scores(scores: dict, class_names: tuple[str, ...]) -> dict:
    """ConfusionMatrix.scores() with the per-class lists keyed by class name."""
    return {key: dict(zip(class_names, value)) if isinstance(value, list) else value for key, value in scores.items()}


def predict_test_split(cfg) -> dict:
    samples = read_split(cfg, "test")
    labels = read_labels(cfg.data.labels)
    check_samples(samples, labels.num_classes, split_file(cfg, "test"))
    models = load_models(cfg)
    for name, predictor in models.items():
        if tuple(predictor.meta.class_names) != labels.names:
            raise StageError(
                f"model {name!r} was trained on classes {list(predictor.meta.class_names)}, but "
                f"{cfg.data.labels} lists {list(labels.names)}; retrain it on these labels"
            )

    alpha = float(cfg.predict.overlay_alpha)
    matrices = {name: ConfusionMatrix(labels.num_classes) for name in models}
    per_sample = {name: [] for name in models}
    model_seconds = dict.fromkeys(models, 0.0)
    root = Path(cfg.paths.predictions_dir)
    with contextlib.ExitStack() as stack:
        out_dirs = {name: stack.enter_context(atomic_dir(root / name)) for name in models}
        with tqdm(total=len(samples), unit="img", desc="predict test split", file=sys.stderr) as progress:
            for batch in batches(samples, cfg.predict.batch_size):
                images = [read_rgb(sample.image) for sample in batch]
                truths = [read_label_png(sample.label) for sample in batch]
                for name, predictor in models.items():
                    started = time.perf_counter()
                    masks = predict_masks(predictor, images)
                    model_seconds[name] += time.perf_counter() - started
                    for sample, rgb, truth, mask in zip(batch, images, truths, masks):
                        write_prediction(out_dirs[name], sample.stem, rgb, mask, alpha)
                        matrices[name].update(mask, truth)
                        per_sample[name].append({"stem": sample.stem, **sample_scores(mask, truth, labels.num_classes)})
                    del masks  # one model's masks at a time (12 MB each for a 12 MP photo)
                progress.update(len(batch))
        summary = {}
        for name, predictor in models.items():
            scores = named_scores(matrices[name].scores(), labels.names)
            write_json_atomic(
                out_dirs[name] / METRICS_NAME,
                {
                    "model": name,
                    "architecture": predictor.meta.architecture,
                    "input_size": list(predictor.meta.input_size),
                    "engine": "paddle" if isinstance(predictor, Predictor) else "onnxruntime",
                    "class_names": list(labels.names),
                    "resize": RESIZE_METHOD,
                    "num_samples": len(samples),
                    "test": scores,
                    "confusion_matrix": matrices[name].matrix.tolist(),  # rows: label, columns: prediction
                    "samples": per_sample[name],
                },
            )
            summary[name] = {
                "dir": str(root / name),
                "mIoU": scores["mIoU"],
                "acc": scores["acc"],
                "model_img_per_s": len(samples) / model_seconds[name] if model_seconds[name] else None,
            }
    return {"mode": "test split", "engine": str(cfg.predict.engine), "samples": len(samples), "models": summary}


# --- any folder of photos -----------------------------------------------------------------------


def predict_folder(cfg) -> dict:
    input_dir = Path(cfg.predict.input_dir)
    if not input_dir.is_dir():
        raise StageError(f"predict.input_dir {input_dir}: no such folder")
    if not cfg.predict.output_dir:
        raise StageError(
            "predict.output_dir is not set: say where the predictions of "
            f"{input_dir} should go, e.g. predict.output_dir=out/"
        )
    output_dir = Path(cfg.predict.output_dir)
    files = list_images(input_dir, skip_dir=output_dir)
    if not files:
        raise StageError(f"{input_dir}: no images to predict (looked for {', '.join(IMAGE_SUFFIXES)})")
    names = output_names(input_dir, files)
    models = load_models(cfg)

    alpha = float(cfg.predict.overlay_alpha)
    predicted, skipped = [], []
    with contextlib.ExitStack() as stack:
        out_dirs = {name: stack.enter_context(atomic_dir(output_dir / name)) for name in models}
        with tqdm(total=len(files), unit="img", desc=f"predict {input_dir}", file=sys.stderr) as progress:
            for batch in batches(list(zip(files, names)), cfg.predict.batch_size):
                readable = []
                for path, name in batch:
                    photo = read_photo(path)
                    if isinstance(photo, str):
                        tqdm.write(f"warning: skipped {path}: {photo}", file=sys.stderr)
                        skipped.append({"file": str(path), "error": photo})
                    else:
                        readable.append((name, photo))
                if readable:
                    images = [photo for _, photo in readable]
                    for model_name, predictor in models.items():
                        masks = predict_masks(predictor, images)
                        for (name, photo), mask in zip(readable, masks):
                            write_prediction(out_dirs[model_name], name, photo, mask, alpha)
                        del masks  # one model's masks at a time
                    predicted.extend(name for name, _ in readable)
                progress.update(len(batch))
        if not predicted:
            raise StageError(
                f"{input_dir}: none of its {len(files)} images could be read: "
                + "; ".join(f"{s['file']} ({s['error']})" for s in skipped)
            )
    summary = {
        "input_dir": str(input_dir),
        "output_dir": str(output_dir),
        "models": {name: str(output_dir / name) for name in models},
        "predicted": predicted,
        "skipped": skipped,
    }
    write_json_atomic(output_dir / SUMMARY_NAME, summary)
    return {"mode": "folder", **summary, "counts": {"predicted": len(predicted), "skipped": len(skipped)}}


if __name__ == "__main__":
    stage_main(run)
