"""The short block a pipeline run ends with: each model's test mIoU, the champion with its served version,
where the report is, and what to run next. Printed by report, and by `make demo` after `dvc repro`
(``python -m stages.reporting.summary``), from <paths.reports_dir>/metrics.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SERVE_PORT = 5001


def summary(metrics: dict, reports_dir: str | Path, note: str | None = None) -> str:
    """The block, from reports/metrics.json's content."""
    reports_dir = Path(reports_dir)
    models = {name: entry for name, entry in metrics.items() if name != "champion"}
    width = max(len(f"{name} ({entry.get('architecture') or '?'})") for name, entry in models.items())
    lines = ["", "doveseg: test mIoU on the test split"]
    for name, entry in models.items():
        title = f"{name} ({entry.get('architecture') or '?'})"
        lines.append(f"  {title:<{width}}  {entry['test']['mIoU']:.3f}")
    champion = metrics.get("champion")
    if champion:
        title = f"{champion['model'] or '?'} ({champion['architecture'] or '?'})"
        lines += [
            f"champion: {title}, test mIoU {champion['test_mIoU']:.3f}",
            f"  served model {champion['uri']} = version {champion['version']} (trained as {champion['training_model']})",
        ]
    else:
        lines.append("champion: none yet (no served version scored on this test split)")
    if note:
        lines.append(f"  {note}")
    uri = champion["uri"] if champion else "models:/doveseg-segmenter@champion"
    lines += [
        f"report: {reports_dir / 'index.html'} (also {reports_dir / 'report.md'}); every figure: dvc metrics show",
        "next:",
        "  make mlflow-ui                      # runs, the registry and the champion on http://127.0.0.1:5000",
        f'  source .venv/bin/activate && mlflow models serve -m "{uri}" --env-manager local -p {SERVE_PORT}',
        "",
    ]
    return "\n".join(lines)


def print_summary(reports_dir: str | Path, note: str | None = None) -> None:
    metrics = json.loads((Path(reports_dir) / "metrics.json").read_text(encoding="utf-8"))
    print(summary(metrics, reports_dir, note), flush=True)


if __name__ == "__main__":  # make demo: the block again after `dvc repro`, whether report ran or not
    from stages.common.config import load_params

    reports = Path(load_params(sys.argv[1:]).paths.reports_dir)
    if not (reports / "metrics.json").is_file():
        sys.exit(f"{reports / 'metrics.json'}: no report yet; run dvc repro")
    print_summary(reports)
