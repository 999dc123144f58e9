"""Look at the MLflow UI in a real headless Chromium (Debian's `chromium`; nothing is downloaded).

`render(url)` loads a page of the single-page app in a fresh browser profile, lets its requests finish,
and returns the visible text and a screenshot. Used by the e2e tests (tests/test_pipeline_e2e.py, on the
runs of a real `dvc repro`), and as a script against a running UI (`make mlflow-ui`), saving screenshots:

    python tests/mlflow_ui.py http://127.0.0.1:5000 --out ui-screenshots/
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HEADLESS_FLAGS = [  # a quiet headless browser: nothing fetched beyond the page (also tests/docs_browser.py)
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FLAGS = [*HEADLESS_FLAGS, "--window-size=1600,1000"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def need_chromium() -> None:
    """Skip a test without Chromium, except in CI (.ci/run installs it), where that is a failure."""
    import pytest

    if chromium() is None:
        message = "no chromium on PATH (Debian: apt-get install chromium)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(message)
        pytest.skip(message)


def _browser(url: str, action: str, wait_ms: int, timeout_s: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:  # a fresh user, no saved view
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}", action, url],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )


def visible_text(dom: str) -> list[str]:
    """The text of a rendered page, one string per element, without scripts and styles."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)
    return [line.strip() for line in html.unescape(re.sub(r"<[^>]+>", "\n", dom)).split("\n") if line.strip()]


def render(url: str, screenshot: Path, wait_ms: int = 20000, timeout_s: float = 180) -> list[str]:
    """Load ``url``, save a screenshot, return the page's visible text (its <title> first)."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    _browser(url, f"--screenshot={screenshot}", wait_ms, timeout_s)
    return visible_text(_browser(url, "--dump-dom", wait_ms, timeout_s).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ui_url", help="the MLflow UI, e.g. http://127.0.0.1:5000")
    parser.add_argument("--out", type=Path, default=Path("ui-screenshots"))
    args = parser.parse_args()
    if chromium() is None:
        sys.exit("no chromium on PATH (Debian: apt-get install chromium)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stages.common.config import load_params
    from stages.tracking.runs import experiment_page

    cfg = load_params([f"mlflow.tracking_uri={os.environ.get('MLFLOW_TRACKING_URI', args.ui_url)}"])
    pages = {
        "experiment": experiment_page(cfg, args.ui_url),
        "models": f"{args.ui_url.rstrip('/')}/#/models?workflowType=machine_learning",
    }
    for name, url in pages.items():
        text = render(url, args.out / f"{name}.png")
        print(f"{name}: {url}\n  saved {args.out / f'{name}.png'}\n  text: {' | '.join(text[:80])}")


if __name__ == "__main__":
    main()
