"""ONNX models: an exported Paddle inference model converted with paddle2onnx, run with onnxruntime.

``convert`` writes ``model.onnx`` beside the Paddle files of a deploy folder; ``OnnxPredictor`` has the
interface of ``stages.models.inference_model.Predictor`` (``.meta`` and ``.logits(batch)``), so the same
prediction code runs on either engine.

paddle2onnx 2.1 calls ``sys.exit`` on some conversion failures and aborts the process (SIGABRT) on others,
printing its reasons instead of raising them. ``convert`` therefore runs it in a child process, reads the
child's output (the converter names each op as it goes) and raises one ConversionError naming the model,
the op and the converter's reason, whatever way the child ended.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from stages.common.config import StageError
from stages.models.inference_model import META_NAME, model_files, read_meta

ONNX_NAME = "model.onnx"
# ONNX opsets paddle2onnx 2.1 writes (its own range); 13 is read by every runtime people deploy on
# (onnxruntime, TensorRT 8+, OpenVINO) and holds every op both networks use.
MIN_OPSET, MAX_OPSET = 7, 19
INPUT_DIM_NAMES = ("batch", None, "height", "width")  # names for the input's dynamic dimensions
CONVERT_TIMEOUT_S = 1800
# paddle2onnx's words when an op (adaptive pooling, ...) needs fixed input sizes: a static conversion may work
NEEDS_STATIC_SHAPE = re.compile(r"static (input )?shape", re.IGNORECASE)


class ConversionError(StageError):
    """paddle2onnx could not convert a model: ``op`` and ``reason`` as the converter gave them."""

    def __init__(self, message: str, op: str, reason: str):
        super().__init__(message)
        self.op, self.reason = op, reason

    @property
    def needs_static_shape(self) -> bool:
        return bool(NEEDS_STATIC_SHAPE.search(self.reason))


def failure_reason(log: str) -> tuple[str, str]:
    """(op, reason) from paddle2onnx's verbose output: the op it started and never finished (or the one its
    error line names), and the first line of its error."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)  # colour codes
    started = re.findall(r"Start export (\S+), op_id: (\d+)", log)
    finished = set(re.findall(r"Finish export (\S+), op_id: (\d+)", log))
    unfinished = [op for op, op_id in started if (op, op_id) not in finished]
    op_error = re.search(r"\[OP: (\S+)\] ([^\n]+)", log)  # [ERROR][Paddle2ONNX] [OP: pd_op.pool2d] Adaptive ...
    unsupported = re.search(r"operators? not supported[^\n]*?:?\s*([^\n]+)", log)
    if op_error:
        op = op_error.group(1)
    else:
        op = unfinished[-1] if unfinished else (unsupported.group(1).strip() if unsupported else "unknown")
    error = re.search(r"Failed to convert PaddlePaddle model: ([^\n]+)", log)
    if error:
        reason = error.group(1).strip().rstrip(".")
    elif op_error:
        reason = op_error.group(2).strip().rstrip(".")
    else:
        reason = "see the converter's log"
    return op, reason


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"the converter was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"the converter was killed by signal {-returncode}"
    return f"the converter exited with status {returncode}"


def convert(model_dir: str | Path, onnx_path: str | Path, opset: int, model_name: str) -> None:
    """Convert ``model_dir``'s Paddle inference model to ONNX at ``onnx_path``, at exactly ``opset``.

    Dynamic dimensions of the Paddle program (batch, and height and width when exported so) stay
    dynamic, named as in INPUT_DIM_NAMES. paddle2onnx runs in a child process (it exits or aborts on
    failure); a failure raises ConversionError, one line naming the model, the op and the reason.
    """
    import onnx
    import paddle2onnx

    model_file, params_file = model_files(model_dir)
    onnx_path = Path(onnx_path)
    onnx_path.unlink(missing_ok=True)
    # The child imports only paddle2onnx (which imports Paddle: most of its start-up time).
    # optimize_tool "None": the default (polygraphy) may pip-install packages at run time.
    code = (
        f"import paddle2onnx; paddle2onnx.export({str(model_file)!r}, {str(params_file)!r}, {str(onnx_path)!r}, "
        f"opset_version={int(opset)}, auto_upgrade_opset=False, verbose=True, enable_onnx_checker=True, "
        "optimize_tool='None')"
    )
    try:
        child = subprocess.run(
            [sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=CONVERT_TIMEOUT_S,
        )
        log, returncode = child.stdout.decode("utf-8", "replace"), child.returncode
    except subprocess.TimeoutExpired as err:
        log, returncode = (err.stdout or b"").decode("utf-8", "replace"), None
    if returncode != 0 or not onnx_path.is_file():
        onnx_path.unlink(missing_ok=True)
        op, reason = failure_reason(log)
        ended = f"no answer within {CONVERT_TIMEOUT_S} s" if returncode is None else how_it_ended(returncode)
        if returncode == 0:
            ended = "the converter wrote no model"
        raise ConversionError(
            f"model {model_name!r}: paddle2onnx {paddle2onnx.__version__} cannot convert op {op} "
            f"to ONNX opset {opset}: {reason} ({ended})",
            op,
            reason,
        )
    model = onnx.load(str(onnx_path))
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, INPUT_DIM_NAMES):
        if name and not (dim.HasField("dim_value") and dim.dim_value > 0):
            dim.dim_param = name
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))
    loads_or_raise(onnx_path, model_name)


def loads_or_raise(onnx_path: Path, model_name: str) -> None:
    """paddle2onnx can write a model that passes ONNX's checker but not onnxruntime's shape inference (adaptive
    pooling to more cells than its input has: strides 0): remove it and raise ConversionError."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001  onnxruntime's errors share no useful base class
        onnx_path.unlink(missing_ok=True)
        reason = " ".join(str(err).split())
        reason = reason.split(" failed:", 1)[-1]  # without "[ONNXRuntimeError] ... Load model from <path>"
        node = re.search(r"Op \((\w+)\)", reason)
        raise ConversionError(
            f"model {model_name!r}: onnxruntime cannot load paddle2onnx's ONNX model: {reason}",
            node.group(1) if node else "unknown",
            reason,
        ) from None


def onnx_missing(model_dir: str | Path) -> str | None:
    """Why a deploy folder has no model.onnx, as the export stage recorded it in meta.json; None when it
    recorded nothing (an older export) or has the model."""
    try:
        record = json.loads((Path(model_dir) / META_NAME).read_text()).get("onnx") or {}
    except (OSError, ValueError):
        return None
    return record.get("missing") if record.get("file") is None else None


def input_shape(onnx_path: str | Path) -> list[int | None]:
    """The model input's shape, None for a dynamic dimension."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
        for dim in model.graph.input[0].type.tensor_type.shape.dim
    ]


def opset_of(onnx_path: str | Path) -> int:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


class OnnxPredictor:
    """An onnxruntime session over a deploy folder's model.onnx (and its meta.json): logits for a batch."""

    def __init__(self, model_dir: str | Path, cpu_threads: int = 0):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        self.meta = read_meta(model_dir)
        onnx_path = model_dir / ONNX_NAME
        if not onnx_path.is_file():
            raise StageError(f"{model_dir}: no {ONNX_NAME}; run the export stage (dvc repro export)")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if cpu_threads:
            options.intra_op_num_threads = int(cpu_threads)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self._input = self._session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 -> N x classes x H x W logits."""
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]
