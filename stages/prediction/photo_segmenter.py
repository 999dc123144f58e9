"""The served model: photos in, class-id masks out, as an MLflow pyfunc model (the "photo segmenter").

``PhotoSegmenter.predict`` takes a DataFrame with a binary column ``image`` (a photo file's bytes: JPEG, PNG,
WebP, ...) and returns one with a binary column ``mask``: a PNG of class ids at the photo's own size, EXIF
orientation applied, the same file predict writes to ``class_id/``. It runs an exported ``model.onnx`` on
onnxruntime with the model's ``meta.json`` (input size, normalisation, class names), both logged as one
artifact, through the code predict runs (OnnxPredictor, predict_masks, the image reader). Nothing it imports
imports Paddle. The export stage logs this package with the model (``code_paths``), so a server runs the code
the model was logged with, not whatever the current checkout holds.

A photo it cannot use (no bytes, not an image, more than ``max_image_pixels``: judged from the file's header,
before decoding) raises MlflowException(INVALID_PARAMETER_VALUE), which MLflow's scoring server answers with
HTTP 400; the message names every bad row. So does a request over one of its limits (ServingLimits: rows, the
photo files' bytes, then, from the headers, all its photos' pixels), before any photo is decoded; the message
names the limit and the value that broke it. MLflow's scoring server has already read and parsed the whole JSON
body by then (it offers no body limit of its own), so ``max_request_bytes`` bounds what a request makes the model
do and hold, not what a body far over it costs to parse (docs/serving.md: "Serve the champion").
"""

from __future__ import annotations

import importlib.metadata
import io
import sys
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from PIL import Image, UnidentifiedImageError

from stages.data.images import save_label_png, to_rgb
from stages.models.inference_model import META_NAME
from stages.models.onnx_model import ONNX_NAME, OnnxPredictor
from stages.prediction.masks import predict_masks

IMAGE_COLUMN, MASK_COLUMN = "image", "mask"
DEPLOY_ARTIFACT = "deploy_dir"  # the artifact holding model.onnx and meta.json
DEPLOY_FILES = (ONNX_NAME, META_NAME)
CODE_PATH = Path(__file__).resolve().parents[1]  # the stages package, logged with the model
# What this module and the ones it imports need; stated, not inferred (MLflow would load the model in a
# subprocess to find out, ~10 s).
PACKAGES = (
    "mlflow",
    "onnxruntime",
    "numpy",
    "pandas",
    "pillow",
    "opencv-python",
    "imgviz",
    "hydra-core",
    "omegaconf",
    "pyyaml",
)


def signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]), outputs=Schema([ColSpec(DataType.binary, MASK_COLUMN)])
    )


def pip_requirements() -> list[str]:
    found = []
    for package in PACKAGES:
        try:
            found.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:  # e.g. opencv-python-headless instead
            pass
    return found


@dataclass(frozen=True)
class ServingLimits:
    """What one request may hold (export.serving): the pixels of one photo, its rows (photos), the bytes of its
    photo files (the JSON body is about 4/3 of that: base64) and all its photos' pixels. Logged in the model's
    pickle and metadata, so a served model enforces what it was exported with."""

    max_image_pixels: int
    max_rows: int
    max_request_bytes: int
    max_request_pixels: int

    @classmethod
    def from_params(cls, serving) -> ServingLimits:
        """From export.serving (checked by export.check_params)."""
        return cls(**{name: int(serving[name]) for name in LIMIT_NAMES})


LIMIT_NAMES = tuple(field.name for field in fields(ServingLimits))


def limits_problem(serving, where: str = "export.serving") -> str | None:
    """What is wrong with the limits in ``serving`` (a mapping: export.serving), in one line; None if nothing."""
    for name in LIMIT_NAMES:
        value = serving.get(name)
        if value is None:
            return f"{where}.{name} is not set: give it a whole number >= 1 (params.yaml, conf/config.yaml)"
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{where}.{name} must be a whole number >= 1, got {value!r}"
        if value < 1:
            return f"{where}.{name} must be >= 1, got {value}"
    return None


def pyfunc_arguments(deploy_dir: str | Path, meta, limits: ServingLimits) -> dict:
    """What mlflow.pyfunc.save_model / log_model take to make the photo segmenter of ``deploy_dir`` (a folder
    holding just DEPLOY_FILES), whose meta is ``meta``, refusing requests over ``limits``."""
    return {
        "python_model": PhotoSegmenter(limits),
        "artifacts": {DEPLOY_ARTIFACT: str(deploy_dir)},
        "code_paths": [str(CODE_PATH)],
        "signature": signature(),
        "pip_requirements": pip_requirements(),
        "metadata": {
            "class_names": list(meta.class_names),
            "input_size": list(meta.input_size),
            "mean": list(meta.mean),
            "std": list(meta.std),
            "architecture": meta.architecture,
            **asdict(limits),
        },
    }


class PhotoError(ValueError):
    """Why one photo of a request cannot be segmented."""


def open_photo(data, max_pixels: int) -> Image.Image:
    """The photo's header, read without decoding its pixels; PhotoError when there is nothing usable."""
    if data is None or (isinstance(data, float) and np.isnan(data)):
        raise PhotoError("empty: no photo")
    if not isinstance(data, (bytes, bytearray)):
        raise PhotoError(f"expected the bytes of a photo file, got {type(data).__name__}")
    if not data:
        raise PhotoError("empty: 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below decides
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # Pillow's own bound (~179 MP), also from the header
        raise PhotoError(
            f"too large: Pillow refuses it as a decompression bomb ({err}); the limit is {max_pixels:,} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise PhotoError(
            f"not an image file Pillow can read (JPEG, PNG, WebP, TIFF, BMP, ...): {len(data):,} "
            f"bytes starting {bytes(data[:16])!r}"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise PhotoError(
            f"too large: {width} x {height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels"
        )
    if width * height == 0:
        raise PhotoError(f"empty: {width} x {height} pixels")
    return image


def mask_png(mask: np.ndarray) -> bytes:
    """The class ids as predict's class_id/ PNG (P mode, labelme/VOC palette), in memory."""
    buffer = io.BytesIO()
    save_label_png(buffer, mask)
    return buffer.getvalue()


def bad_request(problems: list[str], total: int) -> MlflowException:
    return MlflowException.invalid_parameter_value(
        f"cannot segment {len(problems)} of {total} photo(s): " + "; ".join(problems)
    )


def over_limit(name: str, value: str, limit: int, unit: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(
        f"request over {name}: {value}; the limit is {limit:,} {unit} a request"
    )


def check_size(photos: list, limits: ServingLimits) -> None:
    """Rows and bytes: what a request holds, judged before any photo's header is read."""
    if len(photos) > limits.max_rows:
        raise over_limit("max_rows", f"{len(photos):,} photos", limits.max_rows, "photos")
    size = sum(len(data) for data in photos if isinstance(data, (bytes, bytearray)))
    if size > limits.max_request_bytes:
        raise over_limit("max_request_bytes", f"{size:,} bytes of photo files", limits.max_request_bytes, "bytes")


def check_pixels(opened: list[Image.Image], limits: ServingLimits) -> None:
    """All the photos' pixels, from their headers, before any is decoded."""
    pixels = sum(image.width * image.height for image in opened)
    if pixels > limits.max_request_pixels:
        for image in opened:
            image.close()
        raise over_limit(
            "max_request_pixels", f"{pixels:,} pixels in {len(opened)} photos", limits.max_request_pixels, "pixels"
        )


class PhotoSegmenter(mlflow.pyfunc.PythonModel):
    """Photo file bytes in, class-id PNGs out (see the module's docstring)."""

    def __init__(self, limits: ServingLimits):
        self.limits = limits
        self._predictor = None

    def __getstate__(self):  # the onnxruntime session is made on loading, never pickled
        return {**self.__dict__, "_predictor": None}

    def __setstate__(self, state):  # a version logged before the request limits: its photo limit only
        if "limits" not in state:
            pixels = int(state.pop("max_image_pixels"))
            state["limits"] = ServingLimits(pixels, sys.maxsize, sys.maxsize, sys.maxsize)
        self.__dict__.update(state)

    def load_context(self, context) -> None:
        self._predictor = OnnxPredictor(context.artifacts[DEPLOY_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if IMAGE_COLUMN not in model_input:
            raise MlflowException.invalid_parameter_value(
                f"expected a column {IMAGE_COLUMN!r} of photo file bytes, got columns {list(model_input.columns)}"
            )
        photos = list(model_input[IMAGE_COLUMN])
        check_size(photos, self.limits)
        # Every header first, so one answer names every bad photo and nothing is decoded for a bad request.
        opened, problems = [], []
        for row, data in enumerate(photos):
            try:
                opened.append(open_photo(data, self.limits.max_image_pixels))
            except PhotoError as err:
                problems.append(f"row {row}: {err}")
        if problems:
            raise bad_request(problems, len(photos))
        check_pixels(opened, self.limits)
        masks = []
        for row, image in enumerate(opened):  # one at a time: a request's memory is one photo's, not N
            try:
                with image:
                    rgb = to_rgb(image)
            except Exception as err:  # noqa: BLE001 - any decoder failure is this photo's fault
                raise bad_request(
                    [f"row {row}: cannot be decoded ({type(err).__name__}: {err})"], len(photos)
                ) from None
            masks.append(mask_png(predict_masks(self._predictor, [rgb])[0]))
            del rgb
        return pd.DataFrame({MASK_COLUMN: masks})
