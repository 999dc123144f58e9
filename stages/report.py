"""report: the trained models compared on the test split, as DVC metrics, a report, and in MLflow; names the
one champion and ends with a short summary.

Reads predict's <paths.predictions_dir>/<model>/ (metrics.json + class-id masks), the trainers'
<paths.metrics_dir>/train_<model>.json and <paths.plots_dir>/train_<model>.csv, and the test split.
Writes <paths.reports_dir>/ as a whole (it is this stage's folder):
  metrics.json   {model: {"test": {mIoU, mIoU_all_classes, acc, kappa, mDice, mDice_all_classes,
                 IoU: {class: ..}, dice, precision, recall}, "architecture", "serving_model_uri"},
                 "champion": {model, architecture, uri, version, training_model, test_mIoU, ...}}: the file
                 `dvc metrics show/diff` compares (mIoU/mDice over the classes present; per-class null: undefined)
  report.md      the comparison, the champion, per-class scores, training curves, confusion matrices, a grid of
                 test samples and the worst-scoring samples, with figures linked from figures/
  index.html     the same report in one self-contained file (figures embedded as base64)
  figures/*.png
In MLflow it adds each model's test metrics (test/mIoU, ...) and the report to its training run without
reopening it, tags the run with the test set it was scored on, and moves the one champion, the alias
``champion`` of the served model (mlflow.registered_models.serving), to the best version on the contest's
test set, among every experiment's versions (stages.tracking.registry has the rule).
"""

from __future__ import annotations

import os

from stages.common.config import StageError, stage_main
from stages.common.outputs import atomic_dir, write_json_atomic, write_text_atomic
from stages.data.split_lists import read_split
from stages.reporting.document import document, to_html, to_markdown
from stages.reporting.pictures import FIGURES_DIR, draw_figures
from stages.reporting.record import champion_entry, crown_champion, log_report, log_scores
from stages.reporting.results import dvc_metrics, load_results, test_set_id, worst_samples
from stages.reporting.summary import print_summary
from stages.tracking.registry import registered_model_name, serving_model_uri
from stages.tracking.runs import read_run_id
from stages.tracking.store import client as store_client

QUIET_SUMMARY = "DOVESEG_QUIET_SUMMARY"  # set by `make demo`, which prints the summary itself after dvc repro


def run(cfg) -> dict:
    names = list(cfg.predict.models)
    if not names:
        raise StageError("predict.models is empty: there is nothing to report")
    serving = registered_model_name(cfg, "serving")
    samples = read_split(cfg, "test")
    results = load_results(cfg, names, samples)
    client = store_client(cfg)
    served = {r.name: serving_model_uri(client, serving, read_run_id(r.run_id_file)) for r in results}

    with atomic_dir(cfg.paths.reports_dir) as out:  # if MLflow refuses, no half-written reports/ is left
        scored_on = test_set_id(samples)
        for result in results:
            log_scores(cfg, result, scored_on)
        crowning = crown_champion(cfg, client, serving, results, scored_on)
        champion = champion_entry(serving, crowning)
        drawn = draw_figures(cfg, results, samples, out / FIGURES_DIR)
        metrics = {
            r.name: {"test": dvc_metrics(r.scored), "architecture": r.architecture, "serving_model_uri": served[r.name]}
            for r in results
        }
        write_json_atomic(out / "metrics.json", {**metrics, "champion": champion})
        blocks = document(cfg, results, samples, drawn, champion)
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
        "champion_moved": crowning.moved,
        "champion_note": crowning.note,
    }


def end_with_the_summary(cfg, result: dict) -> None:
    """The last thing `dvc repro` prints: after the stage's JSON, the short summary (unless make demo prints it)."""
    if not os.environ.get(QUIET_SUMMARY):
        print_summary(cfg.paths.reports_dir, result["champion_note"])


if __name__ == "__main__":
    stage_main(run, end_with_the_summary)
