"""ONNX models: an exported Paddle inference model converted with paddle2onnx, run with onnxruntime.

``convert`` writes ``model.onnx`` beside the Paddle files of a deploy folder; ``OnnxPredictor`` has the
interface of ``stages.models.inference_model.Predictor`` (``.meta`` and ``.logits(batch)``), so the same
prediction code runs on either engine.

paddle2onnx 2.1 calls ``sys.exit`` on any conversion failure and prints its reasons instead of raising
them: ``convert`` catches the exit, reads the converter's own output (it names each op as it goes) and
raises one StageError naming the model and the op.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from stages.common.config import StageError
from stages.models.inference_model import model_files, read_meta

ONNX_NAME = "model.onnx"
# ONNX opsets paddle2onnx 2.1 writes (its own range); 13 is read by every runtime people deploy on
# (onnxruntime, TensorRT 8+, OpenVINO) and holds every op both networks use.
MIN_OPSET, MAX_OPSET = 7, 19
INPUT_DIM_NAMES = ("batch", None, "height", "width")  # names for the input's dynamic dimensions


@contextlib.contextmanager
def captured_output():
    """Collect everything written to stdout/stderr, by Python and by C++ (file descriptors 1 and 2)."""
    collected = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(collected), contextlib.redirect_stderr(collected):
                yield collected
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            collected.write(sink.read().decode("utf-8", "replace"))


def failure_reason(log: str) -> tuple[str, str]:
    """(op, reason) from paddle2onnx's verbose output: the op it started and never finished, and the
    first line of its error."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)  # colour codes
    started = re.findall(r"Start export (\S+), op_id: (\d+)", log)
    finished = set(re.findall(r"Finish export (\S+), op_id: (\d+)", log))
    unfinished = [op for op, op_id in started if (op, op_id) not in finished]
    unsupported = re.search(r"operators? not supported[^\n]*?:?\s*([^\n]+)", log)
    op = unfinished[-1] if unfinished else (unsupported.group(1).strip() if unsupported else "unknown")
    error = re.search(r"Failed to convert PaddlePaddle model: ([^\n]+)", log)
    reason = error.group(1).strip().rstrip(".") if error else "see the converter's log"
    return op, reason


def convert(model_dir: str | Path, onnx_path: str | Path, opset: int, model_name: str) -> None:
    """Convert ``model_dir``'s Paddle inference model to ONNX at ``onnx_path``, at exactly ``opset``.

    Dynamic dimensions of the Paddle program (batch, and height and width when exported so) stay
    dynamic, named as in INPUT_DIM_NAMES. A failure raises StageError naming the model and the op.
    """
    import onnx
    import paddle2onnx

    model_file, params_file = model_files(model_dir)
    with captured_output() as log:
        try:
            # optimize_tool "None": the default (polygraphy) may pip-install packages at run time.
            paddle2onnx.export(str(model_file), str(params_file), str(onnx_path), opset_version=int(opset),
                               auto_upgrade_opset=False, verbose=True, enable_onnx_checker=True,
                               optimize_tool="None")
            failed = not Path(onnx_path).is_file()
        except SystemExit:  # paddle2onnx exits on every conversion failure
            failed = True
    if failed:
        op, reason = failure_reason(log.getvalue())
        raise StageError(f"model {model_name!r}: paddle2onnx {paddle2onnx.__version__} cannot convert op {op} "
                         f"of {model_file} to ONNX opset {opset}: {reason}")
    model = onnx.load(str(onnx_path))
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, INPUT_DIM_NAMES):
        if name and not (dim.HasField("dim_value") and dim.dim_value > 0):
            dim.dim_param = name
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


def input_shape(onnx_path: str | Path) -> list[int | None]:
    """The model input's shape, None for a dynamic dimension."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
            for dim in model.graph.input[0].type.tensor_type.shape.dim]


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
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        self._session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self._input = self._session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 -> N x classes x H x W logits."""
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]
