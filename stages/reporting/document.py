"""The report as a document: a list of blocks (headings, paragraphs, tables, figures) rendered twice by the
Jinja2 templates beside this module, as Markdown (figures linked) and as one self-contained HTML page
(figures embedded)."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import jinja2

from stages.data.split_lists import Sample, split_file
from stages.reporting.pictures import FIGURES_DIR
from stages.reporting.results import PER_CLASS_KEYS, SUMMARY_KEYS, TRAINING_KEYS, ModelResult, worst_samples

SPLIT_SUMMARY = "summary.json"


MEANS_TEXT = (
    "mIoU and mean Dice average over the classes present in the test labels or the model's prediction "
    '(the convention of mmsegmentation and torchmetrics); the "all classes" means average over every '
    "class of the labels file, an absent class counting 0, as PaddleSeg's own logs do."
)


def document(cfg, results: list[ModelResult], samples: list[Sample], drawn: dict, champion: dict | None) -> list[tuple]:
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
        ("h2", "Champion"),
        ("p", champion_text(champion)),
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


def champion_text(champion: dict | None) -> str:
    if champion is None:
        return "No champion: no served version has been scored on this test split yet."
    return (
        f"{champion['model']} ({champion['architecture']}), test mIoU {fmt(champion['test_mIoU'])}: version "
        f"{champion['version']} of the served model, {champion['uri']} (trained as {champion['training_model']}). "
        "The champion is the best served version, of any experiment, scored on this test set "
        f"({champion['test_set']})."
    )


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


TEMPLATES = Path(__file__).with_name("templates")


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # one Markdown cell
    return env


def _as_dicts(blocks: list[tuple]) -> list[dict]:
    fields = {
        "h1": ("text",),
        "h2": ("text",),
        "p": ("text",),
        "table": ("header", "rows"),
        "figure": ("path", "caption"),
    }
    return [{"kind": kind, **dict(zip(fields[kind], content))} for kind, *content in blocks]


def to_markdown(blocks: list[tuple]) -> str:
    """report.md: figures linked from figures/."""
    found = _as_dicts(blocks)
    for block in found:
        if block["kind"] == "figure":
            block["src"] = f"{FIGURES_DIR}/{block['path'].name}"
    return _environment(autoescape=False).get_template("report.md.j2").render(blocks=found)


def to_html(blocks: list[tuple], out: Path, title: str) -> str:
    """index.html: one self-contained page, every figure a data: URI, nothing else referenced."""
    found = _as_dicts(blocks)
    for block in found:
        if block["kind"] == "figure":
            block["data"] = base64.b64encode((out / FIGURES_DIR / block["path"].name).read_bytes()).decode("ascii")
    return _environment(autoescape=True).get_template("report.html.j2").render(blocks=found, title=title)
