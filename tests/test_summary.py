"""The block `make demo` and `dvc repro` end with (stages.reporting.summary)."""

import json
import subprocess
import sys

from stages.reporting.summary import summary

from conftest import REPO_ROOT

METRICS = {
    "paddle": {"test": {"mIoU": 0.8612}, "architecture": "DoveNet", "serving_model_uri": "models:/doveseg-segmenter/1"},
    "paddleseg": {"test": {"mIoU": 0.834}, "architecture": "UNet", "serving_model_uri": "models:/doveseg-segmenter/2"},
    "champion": {
        "model": "paddle",
        "architecture": "DoveNet",
        "registered_model": "doveseg-segmenter",
        "version": "1",
        "uri": "models:/doveseg-segmenter@champion",
        "version_uri": "models:/doveseg-segmenter/1",
        "training_model": "doveseg-dovenet/1",
        "run_id": "abc",
        "test_mIoU": 0.8612,
        "test_set": "0123456789ab",
    },
}


def test_the_summary_names_each_score_the_champion_its_served_model_the_report_and_what_next():
    lines = summary(METRICS, "reports").splitlines()
    assert lines[1:4] == [
        "doveseg: test mIoU on the test split",
        "  paddle (DoveNet)  0.861",
        "  paddleseg (UNet)  0.834",
    ]
    text = "\n".join(lines)
    assert "champion: paddle (DoveNet), test mIoU 0.861" in text
    assert "served model models:/doveseg-segmenter@champion = version 1 (trained as doveseg-dovenet/1)" in text
    assert "report: reports/index.html (also reports/report.md)" in text
    assert "make mlflow-ui" in text and 'mlflow models serve -m "models:/doveseg-segmenter@champion"' in text
    assert max(len(line) for line in lines) < 120  # readable in a terminal, unlike `dvc metrics show`'s table


def test_without_a_champion_the_summary_says_so():
    text = summary({**METRICS, "champion": None}, "reports", note="no contest has begun")
    assert "champion: none yet" in text and "  no contest has begun" in text


def test_make_demos_last_command_prints_it_from_the_reports_folder(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "stages.reporting.summary"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == summary(METRICS, "reports") + "\n"
    (tmp_path / "reports" / "metrics.json").unlink()
    missing = subprocess.run(
        [sys.executable, "-m", "stages.reporting.summary"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert missing.returncode == 1 and "no report yet; run dvc repro" in missing.stderr
    makefile = (REPO_ROOT / "Makefile").read_text()
    demo = makefile[makefile.index("\ndemo:") : makefile.index("\ntest:")]
    assert demo.strip().splitlines()[-1].strip() == "python -m stages.reporting.summary"


def test_the_tutorials_summary_is_the_committed_runs():
    """docs/getting-started.md shows what make demo ends with: the summary of the committed reports/metrics.json."""
    page = (REPO_ROOT / "docs" / "getting-started.md").read_text()
    [shown] = [b for b in page.split("```text\n")[1:] if b.startswith("doveseg:")]
    committed = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
    assert shown.split("```")[0].strip("\n") == summary(committed, "reports").strip("\n")
