"""A trainer's exported model converted to ONNX as well as it can be: with dynamic height and width, else
(an op that converts only at a fixed input size, like PP-LiteSeg's adaptive pooling) the PaddleSeg model
traced again at its input size; and meta.json saying what model.onnx is, or why there is none."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from stages.common.config import StageError
from stages.common.outputs import write_json_atomic
from stages.models.inference_model import META_NAME
from stages.models.onnx_model import ONNX_NAME, ConversionError, convert
from stages.models.paddleseg_model import can_rebuild, save_static


def convert_to_onnx(deploy_dir: Path, model_dir: Path, input_size, opset: int, name: str) -> dict:
    """model.onnx in ``deploy_dir``: dynamic height and width, else (an op needs fixed sizes) the model
    traced again at ``input_size``. Returns how: {"onnx_conversion": "dynamic" | "static" | None, ...}
    with the converter's one-line reasons."""
    try:
        convert(deploy_dir, deploy_dir / ONNX_NAME, opset, name)
        return {"onnx_conversion": "dynamic"}
    except ConversionError as err:
        dynamic = err
    if not dynamic.needs_static_shape:
        return {"onnx_conversion": None, "onnx_missing": str(dynamic)}
    height, width = input_size
    if not can_rebuild(model_dir):
        return {
            "onnx_conversion": None,
            "onnx_missing": f"{dynamic}; a static {height}x{width} conversion needs "
            "the model's PaddleSeg config and weights (train_paddleseg's)",
        }
    try:
        with tempfile.TemporaryDirectory(prefix="static-") as static_dir:
            save_static(model_dir, static_dir, input_size)
            convert(static_dir, deploy_dir / ONNX_NAME, opset, name)
    except StageError as err:
        static = str(err).removeprefix(f"model {name!r}: ")
        return {"onnx_conversion": None, "onnx_missing": f"{dynamic}; and at a static {height}x{width}: {static}"}
    return {"onnx_conversion": "static", "dynamic_conversion_error": str(dynamic)}


def record_onnx(deploy_dir: Path, conversion: dict, shape: list) -> None:
    """meta.json of the deploy folder says what model.onnx is, or why there is none (predict reads it)."""
    path = deploy_dir / META_NAME
    meta = json.loads(path.read_text())
    if conversion["onnx_conversion"] is None:
        meta["onnx"] = {"file": None, "missing": conversion["onnx_missing"]}
    else:
        meta["onnx"] = {"file": ONNX_NAME, "conversion": conversion["onnx_conversion"], "input_shape": shape}
    write_json_atomic(path, meta)
