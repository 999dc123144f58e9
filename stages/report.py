"""report: the trained models compared on the test split, as DVC metrics, a report, and in MLflow.

Reads predict's <paths.predictions_dir>/<model>/ (metrics.json + class-id masks), the trainers'
<paths.metrics_dir>/train_<model>.json and <paths.plots_dir>/train_<model>.csv, and the test split.
Writes <paths.reports_dir>/ as a whole (it is this stage's folder):
  metrics.json   {model: {"test": {mIoU, mIoU_all_classes, acc, kappa, mDice, mDice_all_classes,
                 IoU: {class: ..}, dice, precision, recall}}}, the file `dvc metrics show/diff` compares
                 (mIoU/mDice over the classes present, see stages.evaluation.metrics; per-class null: undefined)
  report.md      the comparison table, per-class scores, training curves, confusion matrices, a grid of test samples and
                 the worst-scoring samples, with figures linked from figures/
  index.html     the same report in one self-contained file (figures embedded as base64)
  figures/*.png
It then adds the test metrics (test/mIoU, test/IoU/<class>, ...) and the report, as artifacts, to each
model's training run in MLflow (the run id from <paths.models_dir>/<model>/mlflow_run.json) without
reopening it, tags it with the test set it was scored on (``test_set``: a hash of the test samples'
names and labels), and sets the Model Registry alias ``champion`` on the registered version, of either
model, with the best test mIoU among all versions scored on that test set: every earlier run and DVC
experiment counts, so a worse experiment's report leaves the champion where it is (a tie too). The served
model's alias (mlflow.registered_models.serving) follows: it moves to the version the export stage logged
from the champion's training run; metrics.json names each model's served version (``serving_model_uri``).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir, write_json_atomic, write_text_atomic
from stages.data.dvc_hash import is_committed
from stages.data.images import read_label_png, read_rgb
from stages.data.split_lists import Sample, read_split, split_file
from stages.evaluation import figures
from stages.prediction.files import CLASS_ID_DIR, METRICS_NAME
from stages.tracking.registry import (
    CHAMPION,
    TEST_SET_TAG,
    Crowning,
    crown,
    registered_model_name,
    retire_old_aliases,
    serving_model_uri,
)
from stages.tracking.runs import FinishedRun, read_run_id
from stages.tracking.store import client as store_client
from stages.training.summary import STEP_COLUMNS

FIGURES_DIR = "figures"
RUN_ID_FILE = "mlflow_run.json"
# The headline scores (stages.evaluation.metrics: mIoU and mDice over the classes present, then PaddleSeg's
# all-classes means), and the per-class ones.
SUMMARY_KEYS = {
    "mIoU": "mIoU",
    "mIoU_all_classes": "mIoU, all classes (PaddleSeg)",
    "acc": "pixel accuracy",
    "kappa": "Cohen's kappa",
    "mDice": "mean Dice",
    "mDice_all_classes": "mean Dice, all classes (PaddleSeg)",
}
PER_CLASS_KEYS = {"IoU": "IoU", "dice": "Dice", "precision": "precision", "recall": "recall"}
# The training figures the comparison table shows (the rest stay in metrics/train_<model>.json and MLflow).
TRAINING_KEYS = {
    "best_val_mIoU": "best validation mIoU",
    "epochs": "epochs trained",
    "iters": "iterations",
    "batch_size": "batch size",
    "train_seconds": "training time (s)",
    "train_images_per_second": "training images/s",
    "num_params": "parameters",
}
SPLIT_SUMMARY = "summary.json"
MEANS_TEXT = (
    "mIoU and mean Dice average over the classes present in the test labels or the model's prediction "
    '(the convention of mmsegmentation and torchmetrics); the "all classes" means average over every '
    "class of the labels file, an absent class counting 0, as PaddleSeg's own logs do."
)


@dataclass(frozen=True)
class ModelResult:
    name: str
    title: str  # e.g. "paddle (DoveNet)"
    predictions_dir: Path
    scored: dict  # predict's metrics.json
    training: dict  # scalar figures of metrics/train_<name>.json, flattened
    curves: dict  # column -> values, from plots/train_<name>.csv
    run_id_file: Path


def run(cfg) -> dict:
    names = list(cfg.predict.models)
    if not names:
        raise StageError("predict.models is empty: there is nothing to report")
    serving_name = registered_model_name(cfg, "serving")
    samples = read_split(cfg, "test")
    results = load_results(cfg, names, samples)
    client = store_client(cfg)
    served = {r.name: serving_model_uri(client, serving_name, read_run_id(r.run_id_file)) for r in results}

    with atomic_dir(cfg.paths.reports_dir) as out:
        # Inside atomic_dir: if MLflow refuses, no half-reported reports/ is left behind.
        scored_on = test_set_id(samples)
        for result in results:
            log_scores(cfg, result, scored_on)
        crowning = crown_champion(cfg, client, serving_name, results, scored_on)
        champion = champion_entry(client, serving_name, crowning)
        drawn = draw_figures(cfg, results, samples, out / FIGURES_DIR)
        metrics = {r.name: {"test": dvc_metrics(r.scored), "serving_model_uri": served[r.name]} for r in results}
        write_json_atomic(out / "metrics.json", {**metrics, "champion": champion})
        blocks = document(cfg, results, samples, drawn)
        write_text_atomic(out / "report.md", to_markdown(blocks))
        write_text_atomic(out / "index.html", to_html(blocks, out, str(cfg.report.title)))
        for result in results:
            log_report(cfg, result, out)
    return {
        "reports_dir": str(cfg.paths.reports_dir),
        "models": {name: {"mIoU": m["test"]["mIoU"], "acc": m["test"]["acc"]} for name, m in metrics.items()},
        "figures": sorted(path.name for path in drawn.values() if path is not None),
        "worst_samples": [stem for stem, _ in worst_samples(results, int(cfg.report.worst_samples))],
        "champion": champion,
        "champion_note": crowning.note,
    }


def test_set_id(samples: list[Sample]) -> str:
    """What test/mIoU is measured on: the test samples' names and label files, hashed (12 hex digits).
    Scores are comparable, and the champion chosen among them, only when this is equal."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda sample: sample.stem):
        digest.update(sample.stem.encode() + b"\0" + sample.label.read_bytes())
    return digest.hexdigest()[:12]


def crown_champion(cfg, client, serving_name: str, results: list[ModelResult], scored_on: str) -> Crowning:
    """The served model's alias moved to the best version on the contest's test set (stages.tracking.registry),
    among every version of every model, whatever predict.models this run scored. A workspace report decides
    the contest; an experiment's report (DVC_EXP_NAME set) competes in it. Says what happened."""
    workspace = not os.environ.get("DVC_EXP_NAME", "").strip()
    committed = is_committed(cfg.data.processed_dir, cfg.data.splits_dir)
    crowning = crown(client, serving_name, scored_on, workspace, committed)
    trainers = [
        registered_model_name(cfg, model) for model in ("paddle", "paddleseg") if model in cfg.mlflow.registered_models
    ]
    retire_old_aliases(client, trainers)
    if crowning.note:
        print(f"report: {crowning.note}", file=sys.stderr, flush=True)
    unserved = [r.name for r in results if not serving_model_uri(client, serving_name, read_run_id(r.run_id_file))]
    for name in unserved:
        print(
            f"report: model {name!r} has no version of {serving_name} (export made no ONNX model): it does not "
            "compete for the champion",
            file=sys.stderr,
            flush=True,
        )
    return crowning


def champion_entry(client, serving_name: str, crowning: Crowning) -> dict | None:
    """reports/metrics.json's "champion": which model, its versions and score (None when nothing competes)."""
    champion = crowning.champion
    if champion is None:
        return None
    return {
        "model": champion.tags.get("model"),
        "architecture": champion.tags.get("architecture"),
        "registered_model": serving_name,
        "version": champion.version,
        "uri": f"models:/{serving_name}@{CHAMPION}",
        "version_uri": f"models:/{serving_name}/{champion.version}",
        "training_model": champion.tags.get("training_model"),
        "run_id": champion.run_id,
        "test_mIoU": champion.miou,
        "test_set": crowning.contest,
        "moved": crowning.moved,
    }


# --- inputs -------------------------------------------------------------------------------------


def load_results(cfg, names: list[str], samples: list[Sample]) -> list[ModelResult]:
    """Every model's inputs, or one StageError listing everything missing or stale."""
    problems, results = [], []
    test_stems = sorted(sample.stem for sample in samples)
    for name in names:
        predictions_dir = Path(cfg.paths.predictions_dir) / name
        needed = {
            "predictions": predictions_dir / METRICS_NAME,
            "training metrics": Path(cfg.paths.metrics_dir) / f"train_{name}.json",
            "training curves": Path(cfg.paths.plots_dir) / f"train_{name}.csv",
            "MLflow run id": Path(cfg.paths.models_dir) / name / RUN_ID_FILE,
        }
        missing = [f"{what} {path}" for what, path in needed.items() if not path.is_file()]
        if missing:
            problems.append(f"model {name!r}: missing {', '.join(missing)} (run predict and train_{name})")
            continue
        scored = read_json(needed["predictions"])
        scored_stems = sorted(sample["stem"] for sample in scored.get("samples", []))
        if scored_stems != test_stems:
            problems.append(
                f"{needed['predictions']}: scores other samples than {split_file(cfg, 'test')}; rerun predict"
            )
            continue
        masks = [predictions_dir / CLASS_ID_DIR / f"{stem}.png" for stem in test_stems]
        lost = [str(path) for path in masks if not path.is_file()]
        if lost:
            problems.append(f"model {name!r}: predicted masks missing: {', '.join(lost[:5])}; rerun predict")
            continue
        architecture = scored.get("architecture") or ""
        results.append(
            ModelResult(
                name=name,
                title=f"{name} ({architecture})" if architecture else name,
                predictions_dir=predictions_dir,
                scored=scored,
                training=flat_scalars(read_json(needed["training metrics"])),
                curves=read_curves(needed["training curves"]),
                run_id_file=needed["MLflow run id"],
            )
        )
    if problems:
        raise StageError("cannot report:\n  " + "\n  ".join(problems))
    return results


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise StageError(f"{path}: expected a JSON object")
    return data


def flat_scalars(data: dict, prefix: str = "") -> dict:
    """Numbers and strings of a nested dict, keyed "outer.inner" (lists are left out)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str)) or value is None:
            flat[f"{prefix}{key}"] = value
    return flat


def read_curves(path: Path) -> dict[str, list[float]]:
    """A training-curve CSV (epoch, train_loss, val_mIoU, val_acc, ...) as columns; blanks become NaN."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = reader.fieldnames or []
    if not columns:
        raise StageError(f"{path}: no header row")
    return {column: [to_float(row.get(column)) for row in rows] for column in columns}


def to_float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# --- metrics ------------------------------------------------------------------------------------


def dvc_metrics(scored: dict) -> dict:
    """The test scores for reports/metrics.json: summary numbers, then per-class ones by class name."""
    test = scored["test"]
    metrics = {key: test.get(key) for key in SUMMARY_KEYS}
    metrics.update({key: test[key] for key in PER_CLASS_KEYS})
    metrics["samples"] = scored["num_samples"]
    return metrics


def mlflow_metrics(scored: dict) -> dict[str, float]:
    """test/mIoU, test/acc, ..., test/IoU/<class>, test/precision/<class>, ... for MLflow."""
    test = scored["test"]
    metrics = {f"test/{key}": test.get(key) for key in SUMMARY_KEYS}
    for key in PER_CLASS_KEYS:
        for class_name, value in test[key].items():
            metrics[f"test/{key}/{metric_safe(class_name)}"] = value
    return metrics


def metric_safe(name: str) -> str:
    """MLflow metric names allow letters, digits, _ - . space : and /; anything else becomes _."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def log_scores(cfg, result: ModelResult, scored_on: str) -> None:
    """Test metrics, and the test set they were measured on, added to the training run (whose duration
    stays the training's)."""
    run = FinishedRun(cfg, result.run_id_file)
    run.log_metrics(mlflow_metrics(result.scored))
    run.set_tag(TEST_SET_TAG, scored_on)


def log_report(cfg, result: ModelResult, out: Path) -> None:
    run = FinishedRun(cfg, result.run_id_file)
    run.log_artifacts(out / FIGURES_DIR, "report/figures")
    for name in ("report.md", "index.html", "metrics.json"):
        run.log_artifact(out / name, "report")


def worst_samples(results: list[ModelResult], count: int) -> list[tuple[str, dict[str, float]]]:
    """The ``count`` test samples with the lowest mean per-sample mIoU over the models, worst first."""
    per_stem: dict[str, dict[str, float]] = {}
    for result in results:
        for sample in result.scored["samples"]:
            if sample.get("mIoU") is not None:
                per_stem.setdefault(sample["stem"], {})[result.name] = sample["mIoU"]
    ranked = sorted(per_stem.items(), key=lambda item: (float(np.mean(list(item[1].values()))), item[0]))
    return ranked[: max(0, count)]


# --- figures ------------------------------------------------------------------------------------


def draw_figures(cfg, results: list[ModelResult], samples: list[Sample], folder: Path) -> dict:
    """Figure name -> PNG path (None where there was nothing to draw)."""
    drawn = {
        "curves": figures.training_curves(
            {r.title: r.curves for r in results},
            folder / "training_curves.png",
            x_name=_x_column(results),
            step_columns=STEP_COLUMNS,
        )
    }
    for result in results:
        drawn[f"confusion:{result.name}"] = figures.confusion_matrix(
            np.asarray(result.scored["confusion_matrix"]),
            result.scored["class_names"],
            result.title,
            folder / f"confusion_{result.name}.png",
        )
    by_stem = {sample.stem: sample for sample in samples}
    grid = evenly_spaced([sample.stem for sample in samples], int(cfg.report.grid_samples))
    drawn["grid"] = (
        sample_figure(results, [(stem, stem) for stem in grid], by_stem, folder / "test_samples.png", "Test samples")
        if grid
        else None
    )
    worst = worst_samples(results, int(cfg.report.worst_samples))
    captions = [(stem, f"{stem}\nmean mIoU {np.mean(list(scores.values())):.3f}") for stem, scores in worst]
    drawn["worst"] = (
        sample_figure(results, captions, by_stem, folder / "worst_samples.png", "Worst-scoring test samples")
        if worst
        else None
    )
    return drawn


def _x_column(results: list[ModelResult]) -> str:
    first = next(iter(results[0].curves))
    return "epoch" if all("epoch" in r.curves for r in results) else first


def evenly_spaced(stems: list[str], count: int) -> list[str]:
    if count <= 0 or not stems:
        return []
    picks = np.linspace(0, len(stems) - 1, min(count, len(stems))).round().astype(int)
    return [stems[i] for i in dict.fromkeys(picks.tolist())]


def sample_figure(
    results: list[ModelResult], rows: list[tuple[str, str]], by_stem: dict[str, Sample], path: Path, title: str
) -> Path:
    """Rows of input | label | one prediction per model, like the original tutorial's figure."""
    grid = []
    for stem, caption in rows:
        rgb = figures.thumbnail(read_rgb(by_stem[stem].image))
        label = figures.thumbnail(read_label_png(by_stem[stem].label), is_label=True)
        row = [figures.Cell(rgb, caption), figures.Cell(figures.label_over_photo(label, rgb), "label")]
        for result in results:
            mask = figures.thumbnail(
                read_label_png(result.predictions_dir / CLASS_ID_DIR / f"{stem}.png"), is_label=True
            )
            score = next(s["mIoU"] for s in result.scored["samples"] if s["stem"] == stem)
            text = f"{result.title}\nmIoU {score:.3f}" if score is not None else result.title
            row.append(figures.Cell(figures.label_over_photo(mask, rgb), text))
        grid.append(row)
    return figures.picture_grid(grid, path, title)


# --- the document -------------------------------------------------------------------------------
# A report is a list of blocks, rendered twice: Markdown (figures linked) and HTML (figures embedded).


def document(cfg, results: list[ModelResult], samples: list[Sample], drawn: dict) -> list[tuple]:
    titles = [r.title for r in results]
    blocks = [
        ("h1", str(cfg.report.title)),
        (
            "p",
            (
                f"Test split: {len(samples)} sample{'' if len(samples) == 1 else 's'} from {split_file(cfg, 'test')}, each scored at its "
                "photo's full resolution against its label.png; "
                "pixels labelled __ignore__ count nowhere. Predicted masks come back to full size by resizing "
                f"the class scores bilinearly, then taking the argmax. Predictions: {cfg.paths.predictions_dir}/."
            ),
        ),
        ("h2", "Comparison"),
        ("table", ["metric", *titles], comparison_rows(results)),
        ("p", MEANS_TEXT),
        *per_class_blocks(cfg, results),
        ("h2", "Training curves"),
        ("figure", drawn["curves"], "Training loss and validation scores per epoch"),
        ("h2", "Confusion matrices"),
        *[("figure", drawn[f"confusion:{r.name}"], f"Confusion matrix, {r.title}") for r in results],
    ]
    if drawn["grid"] is not None:
        blocks += [
            ("h2", "Test samples"),
            ("p", "Input | label | each model's prediction, coloured over the greyed photo."),
            ("figure", drawn["grid"], "Test samples"),
        ]
    worst = worst_samples(results, int(cfg.report.worst_samples))
    if worst:
        rows = [
            [str(rank), stem, *[fmt(scores.get(r.name)) for r in results]]
            for rank, (stem, scores) in enumerate(worst, start=1)
        ]
        blocks += [
            ("h2", "Worst-scoring samples"),
            (
                "p",
                (
                    "Ranked by the mean over the models of each photo's mIoU (over the classes present "
                    "in its label or prediction)."
                ),
            ),
            ("table", ["rank", "sample", *[f"mIoU {t}" for t in titles]], rows),
            ("figure", drawn["worst"], "Worst-scoring test samples"),
        ]
    return blocks


def comparison_rows(results: list[ModelResult]) -> list[list[str]]:
    """The headline test scores, the input size and a few training figures: one row each."""
    rows = [
        [f"test {label}", *[fmt(r.scored["test"].get(key)) for r in results]] for key, label in SUMMARY_KEYS.items()
    ]
    rows.append(["input size (h x w)", *[" x ".join(map(str, r.scored.get("input_size", []))) for r in results]])
    rows += [
        [label, *[fmt(r.training.get(key)) for r in results]]
        for key, label in TRAINING_KEYS.items()
        if any(key in r.training for r in results)
    ]
    return rows


def train_pixel_share(cfg) -> dict[str, float] | None:
    """Class name -> its share of the train split's pixels (build_splits' summary.json), or None without it."""
    path = Path(cfg.data.splits_dir) / SPLIT_SUMMARY
    try:
        shares = json.loads(path.read_text(encoding="utf-8"))["class_pixel_share"]["train"]
        return {str(name): float(value) for name, value in shares.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def per_class_blocks(cfg, results: list[ModelResult]) -> list[tuple]:
    """One table, a row per class and a column per metric and model; the classes never seen in training
    (no pixels in the train split) come last, marked, and those absent from the test set too are only named."""
    class_names = list(results[0].scored["class_names"])
    share = train_pixel_share(cfg)
    unseen = [name for name in class_names if share is not None and not share.get(name)]
    header = ["class", "train pixels", *[f"{label} {r.name}" for label in PER_CLASS_KEYS.values() for r in results]]

    def row(name: str) -> list[str]:
        values = [r.scored["test"][key].get(name) for key in PER_CLASS_KEYS for r in results]
        trained = "-" if share is None else ("none" if name in unseen else f"{100 * share[name]:.2f}%")
        return [name, trained, *[fmt(value) for value in values]]

    def scored(name: str) -> bool:
        return any(r.scored["test"][key].get(name) is not None for key in PER_CLASS_KEYS for r in results)

    rows = [row(name) for name in class_names if name not in unseen]
    rows += [row(name) for name in unseen if scored(name)]
    text = (
        'Test scores per class. "-": undefined (a class absent from both label and prediction has no IoU '
        'or Dice, one never predicted no precision, one absent from the labels no recall). "train pixels": '
        "the class's share of the train split's pixels."
    )
    blocks = [("h2", "Per-class scores"), ("p", text), ("table", header, rows)]
    if unseen:
        blocks.append(
            (
                "p",
                (
                    "Never seen in training (no pixels in the train split, so no model could learn them; "
                    "listed last in the table when the test split or a prediction holds them): "
                    f"{', '.join(unseen)}."
                ),
            )
        )
    return blocks


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) <= 1:
            return f"{value:.4f}"  # scores: four decimals, so the models line up
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def to_markdown(blocks: list[tuple]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = []
    for kind, *content in blocks:
        if kind == "h1":
            lines += [f"# {content[0]}", ""]
        elif kind == "h2":
            lines += [f"## {content[0]}", ""]
        elif kind == "p":
            lines += [content[0], ""]
        elif kind == "table":
            header, rows = content
            lines.append("| " + " | ".join(cell(h) for h in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "figure":
            path, caption = content
            lines += [f"![{cell(caption)}]({FIGURES_DIR}/{path.name})", ""]
    return "\n".join(lines)


HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
figure { margin: 1em 0; }
"""


def to_html(blocks: list[tuple], out: Path, title: str) -> str:
    """One self-contained page: every figure is a data: URI, nothing else is referenced."""
    esc = html.escape
    body = []
    for kind, *content in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{esc(content[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{esc(content[0])}</p>")
        elif kind == "table":
            header, rows = content
            body.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
            body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
            body.append("</tbody></table>")
        elif kind == "figure":
            path, caption = content
            data = base64.b64encode((out / FIGURES_DIR / path.name).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


if __name__ == "__main__":
    stage_main(run)
