"""Exported inference models: what both trainers write and what predict loads without training code.

A model folder holds ``inference.json`` + ``inference.pdiparams`` (paddle.jit.save, Paddle 3's PIR
format; any batch size, height and width) and ``meta.json``: the input size, the class names and the
normalisation, so predict preprocesses exactly as training did. The export stage adds ``deploy.yaml``,
the same in PaddleSeg's deploy format, for PaddleSeg's deploy tooling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.config import StageError
from stages.common.outputs import write_json_atomic

MODEL_PREFIX = "inference"
META_NAME = "meta.json"
DEPLOY_NAME = "deploy.yaml"


@dataclass(frozen=True)
class ModelMeta:
    input_size: tuple[int, int]  # (height, width) the model sees
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]  # normalisation of RGB in [0, 1]: (x - mean) / std
    std: tuple[float, float, float]
    architecture: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def export(layer, model_dir: str | Path, meta: ModelMeta) -> None:
    """Save ``layer`` (a paddle.nn.Layer taking NCHW float32) for inference, with its meta."""
    import paddle
    from paddle.static import InputSpec

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    was_training = layer.training
    layer.eval()
    # Any height and width (PaddleSeg's export does the same): the ONNX model keeps them dynamic too.
    spec = InputSpec([None, 3, None, None], "float32", "image")
    paddle.jit.save(layer, str(model_dir / MODEL_PREFIX), input_spec=[spec])
    if was_training:
        layer.train()
    write_json_atomic(
        model_dir / META_NAME,
        {
            "input_size": list(meta.input_size),
            "class_names": list(meta.class_names),
            "mean": list(meta.mean),
            "std": list(meta.std),
            "architecture": meta.architecture,
        },
    )


def read_meta(model_dir: str | Path) -> ModelMeta:
    path = Path(model_dir) / META_NAME
    try:
        raw = json.loads(path.read_text())
        return ModelMeta(
            tuple(raw["input_size"]),
            tuple(raw["class_names"]),
            tuple(raw["mean"]),
            tuple(raw["std"]),
            raw.get("architecture", ""),
        )
    except (OSError, ValueError, KeyError) as err:
        raise StageError(f"{path}: no usable model meta ({err}); train the model first") from None


def model_files(model_dir: str | Path) -> tuple[Path, Path]:
    """(program, parameters) of an exported model: inference.json (Paddle 3) or .pdmodel, + .pdiparams."""
    model_dir = Path(model_dir)
    model_file = model_dir / f"{MODEL_PREFIX}.json"
    if not model_file.is_file():
        model_file = model_dir / f"{MODEL_PREFIX}.pdmodel"
    params_file = model_dir / f"{MODEL_PREFIX}.pdiparams"
    if not model_file.is_file() or not params_file.is_file():
        raise StageError(f"{model_dir}: no exported inference model ({MODEL_PREFIX}.json + .pdiparams)")
    return model_file, params_file


def deploy_config(
    meta: ModelMeta, model_file: str, params_file: str, input_shape: list[int | None] = (None, 3, None, None)
) -> dict:
    """PaddleSeg's deploy.yaml, with the keys its tools/export.py writes (read by paddleseg.deploy.infer.DeployConfig
    and PaddleSeg's deploy/python scripts): the model's files, its input shape (None: any), its
    preprocessing as PaddleSeg transforms (Resize to the input size, [width, height]; then Normalize, which
    scales RGB to [0, 1] first), and its output: logits (output_op none; argmax them for class ids)."""
    height, width = meta.input_size
    return {
        "Deploy": {
            "model": model_file,
            "params": params_file,
            "transforms": [
                {"type": "Resize", "target_size": [int(width), int(height)]},
                {"type": "Normalize", "mean": [float(v) for v in meta.mean], "std": [float(v) for v in meta.std]},
            ],
            "input_shape": list(input_shape),
            "output_op": "none",
            "output_dtype": "float32",
        }
    }


def preprocess(rgb: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32 at the model's input size, normalised as in training."""
    height, width = meta.input_size
    if rgb.shape[:2] != (height, width):
        rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class Predictor:
    """A Paddle Inference predictor over an exported model folder: logits for a batch."""

    def __init__(self, model_dir: str | Path, use_gpu: bool | None = None, cpu_threads: int = 0):
        import paddle
        import paddle.inference as pi

        model_dir = Path(model_dir)
        self.meta = read_meta(model_dir)
        model_file, params_file = model_files(model_dir)
        config = pi.Config(str(model_file), str(params_file))
        if use_gpu is None:
            use_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
        if use_gpu:
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            config.enable_mkldnn()
            # Paddle 3.3.1's oneDNN placement pass breaks interpolate ops (NotImplementedError:
            # ConvertPirAttribute2RuntimeAttribute ... ArrayAttribute<DoubleAttribute>); the other
            # oneDNN kernels still run (~2.8x faster than disable_mkldnn for the UNet).
            config.delete_pass("onednn_placement_pass")
            if cpu_threads:
                config.set_cpu_math_library_num_threads(cpu_threads)
        config.disable_glog_info()
        self._predictor = pi.create_predictor(config)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 -> N x classes x H x W logits."""
        self._input.reshape(batch.shape)
        self._input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        self._predictor.run()
        return self._output.copy_to_cpu()
