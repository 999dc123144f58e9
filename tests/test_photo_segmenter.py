"""The served model in-process: photo files in, predict's class-id PNGs out; bad photos refused by row; no Paddle.

The model is saved with mlflow.pyfunc.save_model from a tiny exported model (tests/tiny_pipeline.py), as the
export stage logs it, with params.yaml's limits (export.serving); tests/test_serve.py serves it with `mlflow
models serve` from a registry. A request over a limit is refused before any photo is decoded: each such request
here also holds a photo that would fail as soon as it was read (not an image) or decoded (a truncated JPEG).
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from PIL import Image

from stages import export, predict
from stages.common.config import StageError
from stages.models.inference_model import read_meta
from stages.prediction.photo_segmenter import DEPLOY_FILES, LIMIT_NAMES, ServingLimits, pyfunc_arguments

from tiny_pipeline import export_both_models, load_served_model, make_cfg, make_dataset, write_photos

LIMITS = ServingLimits.from_params(make_cfg().export.serving)  # params.yaml's


def blank_png(width: int, height: int) -> bytes:
    """A real PNG of width x height pixels (1 bit each, so even 200 MP takes 25 MB to make and 24 KB to send)."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The UNet-like tiny model (coarse scores, resized back bilinearly) saved as the served model, beside
    predict's class-id PNGs of two photos."""
    root = tmp_path_factory.mktemp("segmenter")
    overrides = [*make_dataset(root), "predict.models=[paddleseg]"]
    export_both_models(root / "models")
    photos = write_photos(root / "photos")
    predict.run(make_cfg(*overrides, f"predict.input_dir={root / 'photos'}", f"predict.output_dir={root / 'out'}"))
    bundle = root / "bundle"
    bundle.mkdir()
    for file in DEPLOY_FILES:
        shutil.copyfile(root / "exports" / "paddleseg" / file, bundle / file)
    mlflow.pyfunc.save_model(str(root / "model"), **pyfunc_arguments(bundle, read_meta(bundle), LIMITS))
    return root / "model", photos, root / "out" / "paddleseg" / "class_id"


def test_photo_files_in_predicts_class_id_pngs_out(saved):
    model_dir, photos, predicted = saved
    model = load_served_model(str(model_dir))
    inputs, outputs = model.metadata.signature.inputs, model.metadata.signature.outputs
    assert [(c.name, c.type.name) for c in inputs.inputs] == [("image", "binary")]
    assert [(c.name, c.type.name) for c in outputs.inputs] == [("mask", "binary")]
    assert model.metadata.metadata["class_names"] == ["_background_", "dove"]

    answer = model.predict(pd.DataFrame({"image": [photo.read_bytes() for photo in photos]}))
    assert list(answer.columns) == ["mask"] and len(answer) == 2
    for photo, mask in zip(photos, answer["mask"]):
        served = Image.open(io.BytesIO(mask))
        expected = Image.open(predicted / f"{photo.stem}.png")
        assert (served.format, served.mode) == ("PNG", "P")
        assert served.getpalette() == expected.getpalette()
        assert np.array_equal(np.asarray(served), np.asarray(expected))
        assert np.asarray(served).any(), "the dove is found"
    # the JPEG is stored sideways (36 x 52) and seen upright: EXIF orientation applied, as predict does
    assert Image.open(io.BytesIO(answer["mask"][1])).size == (52, 36)


def test_bad_photos_are_refused_by_row_before_any_is_decoded_and_the_model_keeps_working(saved):
    model_dir, photos, predicted = saved
    model = load_served_model(str(model_dir))
    good = photos[0].read_bytes()
    requests = [b"", b"this is not a photo", blank_png(10_000, 6_000), blank_png(20_000, 10_000), good]
    with pytest.raises(MlflowException) as caught:
        model.predict(pd.DataFrame({"image": requests}))
    assert caught.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
    assert caught.value.get_http_status_code() == 400
    message = caught.value.message
    assert message.startswith("cannot segment 4 of 5 photo(s): row 0: empty: 0 bytes; row 1: not an image file")
    assert "row 2: too large: 10000 x 6000 = 60,000,000 pixels; the limit is 40,000,000 pixels" in message
    # Pillow's own bound refuses it first, unless something in the process lifted Pillow's global limit
    assert re.search(
        r"row 3: too large: (Pillow refuses it as a decompression bomb \(Image size \(200000000 pixels\)"
        r"|20000 x 10000 = 200,000,000 pixels)",
        message,
    ), message
    assert "row 4" not in message

    jpeg = photos[1].read_bytes()
    truncated = jpeg[: len(jpeg) // 2]  # the header, then the data stops
    with pytest.raises(MlflowException, match=r"cannot segment 1 of 2 photo\(s\): row 1: cannot be decoded"):
        model.predict(pd.DataFrame({"image": [good, truncated]}))

    answer = model.predict(pd.DataFrame({"image": [good]}))
    expected = np.asarray(Image.open(predicted / f"{photos[0].stem}.png"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(answer["mask"][0]))), expected)


def test_the_served_model_loads_and_predicts_without_paddle(saved, tmp_path):
    model_dir, photos, _ = saved
    script = f"""
import io, json, sys
import pandas as pd
import mlflow.pyfunc
model = mlflow.pyfunc.load_model({str(model_dir)!r})
answer = model.predict(pd.DataFrame({{"image": [open({str(photos[0])!r}, "rb").read()]}}))
import stages
print(json.dumps({{"masks": len(answer), "stages": stages.__file__,
                  "paddle": sorted(m for m in sys.modules if m.split(".")[0] in ("paddle", "paddleseg", "paddle2onnx"))}}))
"""
    # From an empty folder, as `mlflow models serve` runs: `stages` comes from the model's own copy.
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["masks"] == 1
    assert found["paddle"] == []
    assert Path(found["stages"]).is_relative_to(model_dir / "code")


def truncated_jpeg(width: int, height: int) -> bytes:
    """A JPEG whose header is whole and whose data stops halfway: it opens, then fails to decode."""
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 60).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()[: buffer.tell() // 2]


def refusal(model, photos: list) -> str:
    """The message of the 400 (INVALID_PARAMETER_VALUE) the model answers ``photos`` with."""
    with pytest.raises(MlflowException) as caught:
        model.predict(pd.DataFrame({"image": photos}))
    assert caught.value.get_http_status_code() == 400
    assert caught.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
    return caught.value.message


def test_the_limits_are_params_yamls_and_travel_with_the_model(saved):
    model_dir, _, _ = saved
    metadata = load_served_model(str(model_dir)).metadata.metadata
    assert {name: metadata[name] for name in LIMIT_NAMES} == {
        "max_image_pixels": 40_000_000,
        "max_rows": 16,
        "max_request_bytes": 32_000_000,
        "max_request_pixels": 40_000_000,
    }
    assert ServingLimits(**{name: metadata[name] for name in LIMIT_NAMES}) == LIMITS


def test_requests_over_a_limit_are_refused_naming_it_before_any_photo_is_decoded(saved):
    model_dir, photos, predicted = saved
    model = load_served_model(str(model_dir))
    good, junk = photos[0].read_bytes(), b"this is not a photo"
    # rows and bytes: judged before any header is read (the junk row is not named)
    assert refusal(model, [good] * 16 + [junk]) == "request over max_rows: 17 photos; the limit is 16 photos a request"
    message = refusal(model, [junk, good, b"x" * (32_000_001 - len(good) - len(junk))])
    assert message == (
        "request over max_request_bytes: 32,000,001 bytes of photo files; the limit is 32,000,000 bytes a request"
    )
    # pixels: from the headers (each photo within max_image_pixels), before any is decoded
    message = refusal(model, [truncated_jpeg(2000, 1000), blank_png(6000, 6500)])
    assert message == (
        "request over max_request_pixels: 41,000,000 pixels in 2 photos; the limit is 40,000,000 pixels a request"
    )
    # at the limits: served
    answer = model.predict(pd.DataFrame({"image": [good] * 16}))
    expected = np.asarray(Image.open(predicted / f"{photos[0].stem}.png"))
    assert len(answer) == 16
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(answer["mask"][15]))), expected)


def test_exports_check_refuses_a_bad_limit_in_one_line():
    params = make_cfg().export
    bad = {0: "must be >= 1, got 0", -5: "must be >= 1, got -5", "abc": "must be a whole number >= 1, got 'abc'"}
    bad.update({1.5: "must be a whole number >= 1, got 1.5", None: "is not set: give it a whole number >= 1"})
    for name in LIMIT_NAMES:
        for value, problem in bad.items():
            wrong = params.copy()
            wrong.serving[name] = value
            with pytest.raises(StageError) as caught:
                export.check_params(wrong)
            assert str(caught.value).startswith(f"export.serving.{name} {problem}")
            assert "\n" not in str(caught.value)
        export.check_params(params)  # the copies left it whole


def test_a_version_logged_before_the_request_limits_still_loads_with_its_photo_limit():
    import pickle

    from stages.prediction.photo_segmenter import PhotoSegmenter

    old = PhotoSegmenter.__new__(PhotoSegmenter)
    old.__dict__.update({"max_image_pixels": 1234, "_predictor": None})  # what an older export pickled
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.limits.max_image_pixels == 1234 and loaded.limits.max_rows > 10**9
