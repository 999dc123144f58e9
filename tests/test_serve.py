"""README's "Serve the champion", run as written: `mlflow models serve` of models:/doveseg-segmenter@champion on
127.0.0.1, its curl and its Python client, against predict's masks of the same photos; bad requests; the model
in-process.

The project here is tiny (tests/tiny_pipeline.py: a random DoveNet and a red-box detector as the UNet, exported
and logged for real by the export stage); tests/test_pipeline_e2e.py serves a smoke-trained champion the same
way. README's commands run with only the port changed (5001 may be taken on a shared machine).
"""

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from stages import export, predict
from stages.tracking.registry import CHAMPION
from stages.tracking.runs import read_run_id

from conftest import REPO_ROOT
from mlflow_server import free_port
from model_server import masks, model_server, photos_request, post, serving_env
from tiny_pipeline import load_served_model, make_cfg, make_dataset, trained_models, write_photos

pytestmark = pytest.mark.slow
README_PORT = "5001"


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block in docs/serving.md's "Serve the champion" section, in order."""
    text = (REPO_ROOT / "docs" / "serving.md").read_text()
    section = text.split("\n## Serve the champion\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def agreement(mask_png: bytes, expected_png: Path) -> float:
    served, expected = np.asarray(Image.open(io.BytesIO(mask_png))), np.asarray(Image.open(expected_png))
    assert served.shape == expected.shape
    return float((served == expected).mean())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A project after `dvc repro`, tiny: both models exported (each logging a version of the served model),
    the UNet the champion, MLflow's store ./mlflow.db; predict's masks of two photos; README's server on it."""
    root = tmp_path_factory.mktemp("serve")
    photos = write_photos(root / "photos")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        overrides = [
            *make_dataset(root),
            f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"mlflow.artifact_location={root / 'mlruns'}",
            "predict.models=[paddleseg]",
        ]
        cfg = make_cfg(*overrides)
        trained_models(root, cfg)
        export.run(cfg)
        serving = MlflowClient(str(cfg.mlflow.tracking_uri))  # the UNet made champion, as report would
        [version] = serving.search_model_versions(
            f"run_id = '{read_run_id(root / 'models' / 'paddleseg' / 'mlflow_run.json')}'"
        )
        serving.set_registered_model_alias(version.name, CHAMPION, version.version)
        predict.run(make_cfg(*overrides, f"predict.input_dir={root / 'photos'}", f"predict.output_dir={root / 'out'}"))
    [(language, serve)] = [block for block in readme_blocks() if "mlflow models serve" in block[1]]
    assert language == "bash" and README_PORT in serve
    port = str(free_port())
    # From the project's root, the venv activated, no MLFLOW_TRACKING_URI: MLflow's default store, ./mlflow.db.
    with model_server(serve.replace(README_PORT, port), int(port), root, serving_env(), root / "serve.log") as url:
        yield {
            "root": root,
            "url": url,
            "port": port,
            "photos": photos,
            "predicted": root / "out" / "paddleseg" / "class_id",
        }


def test_the_readmes_curl_and_python_client_give_back_predicts_mask(served, tmp_path):
    clients = [block for block in readme_blocks() if "/invocations" in block[1]]
    assert [language for language, _ in clients] == ["bash", "python"]
    assert len(clients[1][1].strip().splitlines()) == 5  # "a five-line Python client"
    photo = served["photos"][1]  # the JPEG stored sideways: EXIF orientation applies
    for language, code in clients:
        folder = tmp_path / language
        folder.mkdir()
        shutil.copyfile(photo, folder / "photo.jpg")
        command = ["bash", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(
            [*command[:-1], command[-1].replace(README_PORT, served["port"])],
            cwd=folder,
            env=serving_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{language}: {done.stderr[-3000:]}"
        assert agreement((folder / "mask.png").read_bytes(), served["predicted"] / f"{photo.stem}.png") >= 0.999


def test_two_photos_in_one_request_answer_predicts_masks_in_order(served):
    photos = served["photos"]
    status, answer = post(served["url"], photos_request([photo.read_bytes() for photo in photos]))
    assert status == 200, answer
    assert len(answer["predictions"]) == 2
    for photo, mask in zip(photos, masks(answer)):
        assert Image.open(io.BytesIO(mask)).mode == "P"
        assert agreement(mask, served["predicted"] / f"{photo.stem}.png") >= 0.999


def test_bad_requests_get_a_400_naming_each_bad_photo_and_the_server_keeps_serving(served):
    url, good = served["url"], served["photos"][0].read_bytes()
    huge = io.BytesIO()
    Image.new("1", (20_000, 10_000)).save(huge, "PNG")  # a real 200 MP PNG (1 bit a pixel: 24 KB to send)
    bad = {
        "not an image file Pillow can read": b"this is not a photo",
        "empty: 0 bytes": b"",
        "too large: Pillow refuses it as a decompression bomb (Image size (200000000 pixels)": huge.getvalue(),
    }
    for reason, data in bad.items():
        status, answer = post(url, photos_request([data]))
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
        assert f"cannot segment 1 of 1 photo(s): row 0: {reason}" in answer["message"]
    status, answer = post(url, photos_request([good, *bad.values()]))
    assert status == 400
    assert re.search(
        r"cannot segment 3 of 4 photo\(s\): row 1: not an image .*; row 2: empty: 0 bytes; "
        r"row 3: too large",
        answer["message"],
    )
    status, answer = post(url, {"dataframe_split": {"columns": ["image"], "data": [["not base64!"]]}})
    assert status == 400 and "Invalid base64" in answer["message"]
    # still serving
    status, answer = post(url, photos_request([good]))
    assert status == 200
    assert agreement(masks(answer)[0], served["predicted"] / f"{served['photos'][0].stem}.png") >= 0.999


def test_the_champion_loads_in_process_as_a_pyfunc(served, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{served['root'] / 'mlflow.db'}")
    model = load_served_model(f"models:/doveseg-segmenter@{CHAMPION}")
    assert model.metadata.metadata["architecture"] == "UNet"
    photos = served["photos"]
    answer = model.predict(pd.DataFrame({"image": [photo.read_bytes() for photo in photos]}))
    for photo, mask in zip(photos, answer["mask"]):
        assert agreement(mask, served["predicted"] / f"{photo.stem}.png") >= 0.999
