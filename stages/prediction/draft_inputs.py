"""What preannotate works on, checked before anything is read or written: its settings (numbers in range,
the input and output folders), the model (named, or the best test mIoU in report's metrics.json, trained on
the labels file's classes), and the photos of the input folder: those to draft and those a person's labelme
JSON already covers (stages.labelme.drafts), which are left alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from stages.common.config import StageError
from stages.labelme.drafts import JsonState, json_state
from stages.models.inference_model import ModelMeta, read_meta
from stages.prediction.files import IMAGE_SUFFIXES, list_images

METRICS_NAME = "metrics.json"  # report's <paths.reports_dir>/metrics.json: {model: {"test": {"mIoU": ...}}}


def check_settings(settings) -> tuple[Path, Path]:
    """preannotate's numbers and folders checked; returns (input_dir, output_dir)."""
    check_numbers(settings)
    return check_folders(settings)


def check_numbers(settings) -> None:
    limits = {
        "tolerance_px": (0, None),
        "min_iou": (0, 1),
        "min_area_px": (0, None),
        "batch_size": (1, None),
        "cpu_threads": (0, None),
        "border_px": (0, None),
        "page_photos": (0, None),
    }
    for key, (low, high) in limits.items():
        value = settings[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < low
            or (high is not None and value > high)
        ):
            wanted = f"a number from {low} to {high}" if high is not None else f"a number >= {low}"
            raise StageError(f"preannotate.{key}={value!r}: must be {wanted}")


def check_folders(settings) -> tuple[Path, Path]:
    if not settings.input_dir:
        raise StageError(
            "preannotate.input_dir is not set: name the folder of photos to draft annotations for, "
            "e.g. preannotate.input_dir=photos/"
        )
    input_dir = Path(settings.input_dir)
    if not input_dir.is_dir():
        raise StageError(f"preannotate.input_dir {input_dir}: no such folder")
    if not settings.output_dir:
        raise StageError(
            "preannotate.output_dir is not set: say where ranking.csv and index.html should go, "
            "e.g. preannotate.output_dir=preannotate/"
        )
    output_dir = Path(settings.output_dir)
    if output_dir.resolve().is_relative_to(input_dir.resolve()):
        raise StageError(
            f"preannotate.output_dir {output_dir} is inside preannotate.input_dir {input_dir}: its "
            f"summary.json would be taken for an annotation there; choose a folder outside it, "
            f"e.g. preannotate.output_dir=preannotate/"
        )
    return input_dir, output_dir


def choose_model(cfg) -> str:
    """preannotate.model, or the model with the best test mIoU in report's metrics.json."""
    models_dir = Path(cfg.paths.models_dir)
    found = sorted(path.name for path in models_dir.iterdir() if path.is_dir()) if models_dir.is_dir() else []
    if cfg.preannotate.model:
        name = str(cfg.preannotate.model)
        if not (models_dir / name).is_dir():
            raise StageError(
                f"preannotate.model={name}: no model folder {models_dir / name} (model folders "
                f"there: {found or 'none; train one first'})"
            )
        return name
    metrics_path = Path(cfg.paths.reports_dir) / METRICS_NAME
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        # one entry a model, and report's "champion" (which names one of them)
        scores = {name: float(entry["test"]["mIoU"]) for name, entry in metrics.items() if name != "champion"}
    except FileNotFoundError:
        raise StageError(
            f"preannotate.model is null, which picks the best test mIoU in {metrics_path}, but that "
            f"file does not exist: run `dvc repro`, or name a model, e.g. preannotate.model="
            f"{found[0] if found else 'paddle'} (model folders in {models_dir}: "
            f"{found or 'none; train one first'})"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise StageError(
            f"{metrics_path}: cannot read the test mIoU of each model ({type(err).__name__}: {err}); "
            f"name a model instead, e.g. preannotate.model=paddle"
        ) from None
    present = {name: score for name, score in scores.items() if name in found}
    if not present:
        raise StageError(
            f"{metrics_path} scores {sorted(scores)}, but none of them has a model folder in "
            f"{models_dir}; train one, or name one with preannotate.model=..."
        )
    return max(sorted(present), key=present.get)


def chosen_model(cfg, labels) -> tuple[str, Path, ModelMeta]:
    """(name, folder, meta) of the model to draft with (see choose_model); it must know the labels' classes."""
    model = choose_model(cfg)
    model_dir = Path(cfg.paths.models_dir) / model
    meta = read_meta(model_dir)
    if tuple(meta.class_names) != labels.names:
        raise StageError(
            f"model {model!r} ({model_dir}) was trained on classes {list(meta.class_names)}, but "
            f"{cfg.data.labels} lists {list(labels.names)}; retrain it on these labels, or point "
            f"data.labels at the labels it was trained on"
        )
    return model, model_dir, meta


def photos_to_draft(input_dir: Path, output_dir: Path) -> tuple[list[tuple[Path, JsonState]], list[dict]]:
    """(photo, the state of its JSON) of each photo to draft, and the photos left alone ({"image", "json"})
    because a person's JSON exists."""
    photos = list_images(input_dir, skip_dir=output_dir)
    if not photos:
        raise StageError(
            f"preannotate.input_dir {input_dir}: no photos to annotate "
            f"(looked for {', '.join(IMAGE_SUFFIXES)}, subfolders included)"
        )
    check_json_clashes(input_dir, photos)

    todo, kept = [], []
    for photo in photos:
        state = json_state(photo.with_suffix(".json"))
        if state is JsonState.PERSON:
            kept.append({"image": relative(photo, input_dir), "json": relative(photo.with_suffix(".json"), input_dir)})
        else:
            todo.append((photo, state))
    if kept:
        tqdm.write(f"left alone: {len(kept)} photo(s) that already have a person's JSON", file=sys.stderr)
    return todo, kept


def check_json_clashes(input_dir: Path, photos: list[Path]) -> None:
    """labelme names a photo's JSON after its stem: two photos with one stem in one folder would share it."""
    seen: dict[Path, Path] = {}
    clashes = []
    for photo in photos:
        json_path = photo.with_suffix(".json")
        key = json_path.parent / json_path.name.casefold()
        if key in seen:
            clashes.append(f"{relative(seen[key], input_dir)} and {relative(photo, input_dir)}")
        seen.setdefault(key, photo)
    if clashes:
        raise StageError(
            f"{input_dir}: photos that would share one labelme JSON (named after the photo's "
            f"stem): {'; '.join(clashes)}; rename one of each pair"
        )


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
