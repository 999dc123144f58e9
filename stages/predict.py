"""predict: every trained model on the test split, scored at full resolution; or on any folder of photos.

Each model is loaded from its exported inference model (models/<name>/, see stages.inference_model) and
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
from PIL import Image
from tqdm import tqdm

from stages.config import StageError, stage_main
from stages.image_io import colorize_label, read_label_png, read_rgb, save_label_png, save_rgb_png
from stages.inference_model import META_NAME, MODEL_PREFIX, Predictor, preprocess
from stages.labels import read_labels
from stages.metrics import ConfusionMatrix
from stages.outputs import atomic_dir, write_json_atomic
from stages.split_lists import check_samples, read_split, split_file

CLASS_ID_DIR = "class_id"
PSEUDO_COLOR_DIR = "pseudo_color_prediction"
OVERLAY_DIR = "added_prediction"
METRICS_NAME = "metrics.json"
SUMMARY_NAME = "summary.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
RESIZE_METHOD = "bilinear logits, then argmax"


def run(cfg) -> dict:
    if cfg.predict.input_dir:
        return predict_folder(cfg)
    return predict_test_split(cfg)


# --- models and masks ---------------------------------------------------------------------------

def load_models(cfg) -> dict[str, Predictor]:
    """One Predictor per name in predict.models; one StageError naming every missing model folder."""
    names = list(cfg.predict.models)
    if not names:
        raise StageError("predict.models is empty: name at least one model folder under paths.models_dir")
    problems = []
    for name in names:
        model_dir = Path(cfg.paths.models_dir) / name
        wanted = [model_dir / META_NAME, model_dir / f"{MODEL_PREFIX}.pdiparams"]
        if not (model_dir / f"{MODEL_PREFIX}.pdmodel").is_file():
            wanted.append(model_dir / f"{MODEL_PREFIX}.json")
        missing = [str(path) for path in wanted if not path.is_file()]
        if missing:
            problems.append(f"model {name!r}: missing {', '.join(missing)}")
    if problems:
        raise StageError("no exported model to predict with (train it first):\n  " + "\n  ".join(problems))
    threads = int(cfg.predict.cpu_threads) or os.cpu_count() or 1
    return {name: Predictor(Path(cfg.paths.models_dir) / name, cpu_threads=threads) for name in names}


def predict_masks(predictor: Predictor, images: list[np.ndarray]) -> list[np.ndarray]:
    """Class-id masks (uint8, each at its image's own size) for a batch of HxWx3 uint8 RGB images."""
    batch = np.stack([preprocess(image, predictor.meta) for image in images])
    logits = predictor.logits(batch)
    return [scores_to_mask(scores, image.shape[:2]) for scores, image in zip(logits, images)]


def scores_to_mask(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C x h x w class scores -> H x W class ids: bilinear resize of the scores, then argmax."""
    height, width = size
    if scores.shape[1:] == (height, width):
        return scores.argmax(axis=0).astype(np.uint8)
    # Bilinear resizing is linear, so each class's margin over class 0, resized, ranks the classes as the
    # resized scores would: one resize fewer, and for two classes just a sign test.
    margins = [_resize_bilinear(channel - scores[0], width, height) for channel in scores[1:]]
    if len(margins) == 1:
        return (margins[0] > 0).astype(np.uint8)
    return np.stack([np.zeros_like(margins[0]), *margins]).argmax(axis=0).astype(np.uint8)


def _resize_bilinear(channel: np.ndarray, width: int, height: int) -> np.ndarray:
    # Pillow's float ("F") bilinear uses pixel centres, like Paddle's interpolate(align_corners=False).
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.BILINEAR))


def overlay(rgb: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """PaddleSeg's added_prediction: the photo weighted 1-alpha plus the class colours weighted alpha."""
    blended = rgb.astype(np.float32) * (1.0 - alpha) + colour.astype(np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def write_prediction(out_dir: Path, name: str, rgb: np.ndarray, mask: np.ndarray, alpha: float) -> None:
    class_id_path = out_dir / CLASS_ID_DIR / f"{name}.png"
    colour_path = out_dir / PSEUDO_COLOR_DIR / f"{name}.png"
    overlay_path = out_dir / OVERLAY_DIR / f"{name}.jpg"
    for path in (class_id_path, colour_path, overlay_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    save_label_png(class_id_path, mask)
    colour = colorize_label(mask)
    save_rgb_png(colour_path, colour)
    # Overlays are only for looking at: as JPEG they take a fraction of a PNG's size on photos.
    Image.fromarray(overlay(rgb, colour, alpha)).save(overlay_path, quality=90)


def batches(items: list, size: int):
    size = max(1, int(size))
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- the test split, scored ---------------------------------------------------------------------

def sample_scores(mask: np.ndarray, label: np.ndarray, num_classes: int) -> dict:
    """One photo's pixel accuracy and mIoU over the classes present in its label or prediction.

    (The split-wide mIoU averages every class; per photo that would give a dove-free photo predicted
    perfectly an IoU of 0 for "dove", so classes absent from both are left out here.)
    """
    matrix = ConfusionMatrix(num_classes)
    matrix.update(mask, label)
    m = matrix.matrix.astype(np.float64)
    intersect = np.diag(m)
    union = m.sum(axis=0) + m.sum(axis=1) - intersect
    present = union > 0
    total = m.sum()
    return {
        "mIoU": float((intersect[present] / union[present]).mean()) if present.any() else None,
        "acc": float(intersect.sum() / total) if total else None,
    }


def named_scores(scores: dict, class_names: tuple[str, ...]) -> dict:
    """ConfusionMatrix.scores() with the per-class lists keyed by class name."""
    return {key: dict(zip(class_names, value)) if isinstance(value, list) else value
            for key, value in scores.items()}


def predict_test_split(cfg) -> dict:
    samples = read_split(cfg, "test")
    labels = read_labels(cfg.data.labels)
    check_samples(samples, labels.num_classes, split_file(cfg, "test"))
    models = load_models(cfg)
    for name, predictor in models.items():
        if tuple(predictor.meta.class_names) != labels.names:
            raise StageError(f"model {name!r} was trained on classes {list(predictor.meta.class_names)}, but "
                             f"{cfg.data.labels} lists {list(labels.names)}; retrain it on these labels")

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
                        per_sample[name].append({"stem": sample.stem,
                                                 **sample_scores(mask, truth, labels.num_classes)})
                progress.update(len(batch))
        summary = {}
        for name, predictor in models.items():
            scores = named_scores(matrices[name].scores(), labels.names)
            write_json_atomic(out_dirs[name] / METRICS_NAME, {
                "model": name,
                "architecture": predictor.meta.architecture,
                "input_size": list(predictor.meta.input_size),
                "class_names": list(labels.names),
                "resize": RESIZE_METHOD,
                "num_samples": len(samples),
                "test": scores,
                "confusion_matrix": matrices[name].matrix.tolist(),  # rows: label, columns: prediction
                "samples": per_sample[name],
            })
            summary[name] = {
                "dir": str(root / name),
                "mIoU": scores["mIoU"],
                "acc": scores["acc"],
                "model_img_per_s": len(samples) / model_seconds[name] if model_seconds[name] else None,
            }
    return {"mode": "test split", "samples": len(samples), "models": summary}


# --- any folder of photos -----------------------------------------------------------------------

def list_images(input_dir: Path, skip_dir: Path | None = None) -> list[Path]:
    """Image files under input_dir (recursively, hidden ones left out), sorted; skip_dir's files excluded."""
    skip = skip_dir.resolve() if skip_dir is not None else None
    found = []
    for path in sorted(input_dir.rglob("*")):
        relative = path.relative_to(input_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return found


def output_names(input_dir: Path, files: list[Path]) -> list[str]:
    """Each file's output name: its path under input_dir without the suffix (refusing two that clash)."""
    names = [path.relative_to(input_dir).with_suffix("").as_posix() for path in files]
    seen: dict[str, Path] = {}
    clashes = []
    for name, path in zip(names, files):
        if name in seen:
            clashes.append(f"{seen[name].name} and {path.name}")
        seen.setdefault(name, path)
    if clashes:
        raise StageError(f"{input_dir}: photos whose names differ only by suffix would overwrite each "
                         f"other's predictions: {'; '.join(clashes)}; rename one of each pair")
    return names


def read_photo(path: Path) -> np.ndarray | str:
    """The photo as RGB (EXIF orientation applied), or the reason it cannot be read."""
    try:
        return read_rgb(path)
    except Exception as err:  # noqa: BLE001 - any decoder failure means "skip this one photo"
        return f"{type(err).__name__}: {err}"


def predict_folder(cfg) -> dict:
    input_dir = Path(cfg.predict.input_dir)
    if not input_dir.is_dir():
        raise StageError(f"predict.input_dir {input_dir}: no such folder")
    if not cfg.predict.output_dir:
        raise StageError("predict.output_dir is not set: say where the predictions of "
                         f"{input_dir} should go, e.g. predict.output_dir=out/")
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
                    predicted.extend(name for name, _ in readable)
                progress.update(len(batch))
        if not predicted:
            raise StageError(f"{input_dir}: none of its {len(files)} images could be read: "
                             + "; ".join(f"{s['file']} ({s['error']})" for s in skipped))
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
