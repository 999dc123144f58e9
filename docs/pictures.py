"""Make the docs' pictures (docs/images/*.png) from real runs; nothing here is drawn by hand.

    .venv/bin/python docs/pictures.py --repo .                       # after `make demo`, committed
    .venv/bin/python docs/pictures.py --repo /tmp/demo --only report labelme

From a repository where `dvc repro` has run (the demo profile looks best):
- report:  the report's figures (reports/figures/), shrunk for the web;
- sweep:   docs/experiments.md's queued sweep, as written there, unless the store already holds experiments
           (about half an hour on 2 cores for the demo profile; it needs the workspace committed);
- mlflow:  the MLflow UI (the `make mlflow-ui` command, on a free port) in Debian's headless Chromium, driven
           through its DevTools (tests/docs_browser.py): the runs table with the test mIoU and the swept
           params as columns, and the chart view's val/mIoU, a line per run;
- labelme: new photos from the demo generator (another seed, no JSON) drafted by preannotate, the most
           uncertain one opened in labelme 6's window, rendered offscreen (Qt's offscreen platform).
Each picture is written as a palette PNG of at most MAX_WIDTH pixels across.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "images"
MAX_WIDTH = 1200
STEPS = ("report", "sweep", "mlflow", "labelme")
BIN = Path(sys.executable).parent


def save_small(image: Image.Image, name: str, max_width: int = MAX_WIDTH) -> Path:
    """A palette PNG of at most MAX_WIDTH pixels across: screenshots and figures keep their look at a tenth of
    the bytes."""
    image = image.convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    path = OUT_DIR / f"{name}.png"
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path.relative_to(HERE.parent)}: {image.width} x {image.height}, {path.stat().st_size / 1000:.0f} KB")
    return path


def side_by_side(paths: list[Path]) -> Image.Image:
    images = [Image.open(path).convert("RGB") for path in paths]
    height = max(image.height for image in images)
    joined = Image.new("RGB", (sum(image.width for image in images), height), "white")
    left = 0
    for image in images:
        joined.paste(image, (left, (height - image.height) // 2))
        left += image.width
    return joined


def run(command: list[str], repo: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": ""}
    return subprocess.run(command, cwd=repo, env=env, check=True, text=True, **kwargs)


# --- the report -------------------------------------------------------------------------------------------


def report_pictures(repo: Path) -> None:
    figures = repo / "reports" / "figures"
    if not figures.is_dir():
        sys.exit(f"{figures}: missing; run `dvc repro` in {repo} first")
    save_small(Image.open(figures / "test_samples.png"), "report-test-samples")
    save_small(Image.open(figures / "training_curves.png"), "report-training-curves")
    save_small(Image.open(figures / "worst_samples.png"), "report-worst-samples")
    save_small(side_by_side(sorted(figures.glob("confusion_*.png"))), "report-confusion")


# --- the queued sweep and the MLflow UI ----------------------------------------------------------------------


def has_experiments(repo: Path) -> bool:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return bool(experiments and client.search_runs(experiments, "tags.dvc_exp_name != ''", max_results=1))


def docs_block(page: str, marker: str) -> str:
    text = (HERE / page).read_text(encoding="utf-8")
    [code] = [code for code in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M) if marker in code]
    return code


def sweep(repo: Path) -> None:
    """docs/experiments.md's queued sweep, its lines as written; `dvc queue status` polled until done."""
    if has_experiments(repo):
        print("sweep: the store already holds experiments; not run again")
        return
    started = time.perf_counter()
    for line in docs_block("experiments.md", "dvc queue start").splitlines():
        command = line.split(" #")[0].strip()
        if command == "dvc queue status":
            while re.search(r"\b(Queued|Running)\b", run(["dvc", "queue", "status"], repo, capture_output=True).stdout):
                time.sleep(20)
        elif command:
            run(["bash", "-c", command], repo)
    print(f"sweep: {time.perf_counter() - started:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shoot(browser, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / f"{name}.png"
        png.write_bytes(base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"]))
        save_small(Image.open(png), name)


def click(browser, selector: str, text: str | None = None, within: str = "document") -> None:
    """Click the element matching `selector` (with exactly `text`, when given) inside `within`."""
    found = browser.evaluate(
        f"""(() => {{
          const scope = {within};
          const hits = scope ? [...scope.querySelectorAll({json.dumps(selector)})].filter(
            e => {json.dumps(text)} === null || (e.innerText || '').trim() === {json.dumps(text)}) : [];
          if (hits.length) hits[0].click();
          return hits.length > 0;
        }})()"""
    )
    if not found:
        sys.exit(f"mlflow: nothing to click: {selector} {text or ''} (has MLflow's UI changed?)")


def mlflow_pictures(repo: Path) -> None:
    """The runs table with a few metric and param columns, and the chart view's val/mIoU, one line per run."""
    sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]
    from stages.common.config import load_params
    from stages.tracking.runs import experiment_page

    from docs_browser import Browser  # the tests' DevTools driver of Debian's headless Chromium

    port = free_port()
    ui_url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)  # noqa: SIM115 - closed below
    # make mlflow-ui's command, without MLflow's GenAI job runner (idle worker processes a picture never needs)
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1", "--port", str(port)],
        cwd=repo, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"{ui_url}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"mlflow ui did not start: see {log.name}")
                time.sleep(1)
        page = experiment_page(load_params([f"mlflow.tracking_uri=sqlite:///{repo / 'mlflow.db'}"], repo), ui_url)
        with Browser(timeout_s=120) as browser:
            browser.send(
                "Emulation.setDeviceMetricsOverride", width=1500, height=560, deviceScaleFactor=1, mobile=False
            )
            browser.goto(page)
            browser.wait_for("document.body.innerText.includes('train_paddleseg')", 120)
            time.sleep(2)
            if browser.evaluate("!![...document.querySelectorAll('button')].find(b => b.ariaLabel === 'Close')"):
                click(browser, "button[aria-label=Close]")  # MLflow's assistant panel
            click(browser, "button", "Columns")
            time.sleep(1)
            popup = "document.querySelector('[role=dialog], [role=menu], [role=listbox], [role=tree]')"
            for column in ("Source", "Models", "test/mIoU", "best_val_mIoU", "train_paddle.lr", "train_paddle.epochs"):
                click(browser, "span", column, within=popup)
                time.sleep(0.5)
            browser.send(
                "Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape", windowsVirtualKeyCode=27
            )
            browser.send("Input.dispatchKeyEvent", type="keyUp", key="Escape", code="Escape", windowsVirtualKeyCode=27)
            time.sleep(2)
            shoot(browser, "mlflow-runs")
            browser.send(
                "Emulation.setDeviceMetricsOverride", width=1400, height=800, deviceScaleFactor=1, mobile=False
            )
            click(browser, "input[value=CHART]")
            time.sleep(3)
            browser.evaluate("document.querySelector('input[placeholder=\"Search metric charts\"]').focus()")
            browser.type("val/mIoU")
            time.sleep(3)
            expanded = browser.evaluate(
                """(() => {
                  for (const button of document.querySelectorAll('button[data-component-id=fullscreen_button_chartcard]')) {
                    let card = button;
                    for (let up = 0; up < 8 && card; up++, card = card.parentElement) {
                      if ((card.innerText || '').trim().startsWith('val/mIoU')) { button.click(); return true; }
                    }
                  }
                  return false;
                })()"""
            )
            if not expanded:
                sys.exit("mlflow: no val/mIoU chart to expand (has MLflow's UI changed?)")
            time.sleep(4)
            shoot(browser, "mlflow-charts")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


# --- a pre-annotation in labelme --------------------------------------------------------------------------------


def labelme_picture(repo: Path, photos: int = 6) -> None:
    sys.path.insert(0, str(HERE.parent))
    from demo_data.doves import write_dataset

    with tempfile.TemporaryDirectory(prefix="preannotate-") as tmp:
        folder = Path(tmp) / "photos"
        write_dataset(folder, photos, seed=7)  # the demo generator, another seed: photos the models never saw
        for annotation in folder.glob("*.json"):
            annotation.unlink()
        run([str(BIN / "python"), "-m", "stages.preannotate", f"preannotate.input_dir={folder}",
             f"preannotate.output_dir={Path(tmp) / 'pre'}"], repo, capture_output=True)  # fmt: skip
        with open(Path(tmp) / "pre" / "ranking.csv", newline="") as handle:
            ranking = list(csv.DictReader(handle))
        print(f"labelme: drafted {len(ranking)} photos; the most uncertain first: {ranking[0]}")
        draft = (folder / ranking[0]["image"]).with_suffix(".json")
        labels = (repo / "data" / "labels.txt").read_text().split()
        # In a process of its own: a modal dialog would wait forever for a click on the offscreen screen.
        subprocess.run(
            [sys.executable, __file__, "--grab-labelme", str(draft), str(Path(tmp) / "labelme.png"), *labels],
            check=True, timeout=300,
        )  # fmt: skip
        save_small(Image.open(Path(tmp) / "labelme.png"), "labelme-draft", max_width=1000)  # a photo: more bytes


def grab_labelme_window(annotation: Path, labels: list[str], path: Path, size=(1300, 760)) -> None:
    """labelme 6's main window on a labelme JSON, drawn by Qt's offscreen platform and grabbed to a PNG."""
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ["XDG_CONFIG_HOME"] = str(path.parent / "config")  # labelme's settings stay out of ~/.config
    from labelme.app import MainWindow
    from PyQt5 import QtWidgets

    app = QtWidgets.QApplication(["labelme"])
    app.setStyle("Fusion")  # as labelme's own main() sets it
    app.setPalette(QtWidgets.QStyleFactory.create("Fusion").standardPalette())
    window = MainWindow(config_overrides={"labels": labels}, file_or_dir=str(annotation))
    window.resize(*size)
    window.show()
    shown = time.monotonic()
    while time.monotonic() - shown < 3:  # let it load the photo and lay out its docks
        app.processEvents()
        time.sleep(0.05)
    if not window.grab().save(str(path)):
        sys.exit(f"labelme: could not save {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="a repository where dvc repro has run")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--grab-labelme", nargs="+", metavar="JSON PNG LABEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.grab_labelme:
        annotation, png, *labels = args.grab_labelme
        grab_labelme_window(Path(annotation), labels, Path(png))
        return
    repo = args.repo.resolve()
    OUT_DIR.mkdir(exist_ok=True)
    if "report" in args.only:
        report_pictures(repo)
    if "sweep" in args.only:
        sweep(repo)
    if "mlflow" in args.only:
        mlflow_pictures(repo)
    if "labelme" in args.only:
        labelme_picture(repo)


if __name__ == "__main__":
    main()
