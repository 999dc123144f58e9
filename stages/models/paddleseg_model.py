"""A PaddleSeg model rebuilt from its trainer's folder, for exports that need a fixed input size.

train_paddleseg leaves ``paddleseg.yml`` (the resolved PaddleSeg config) and ``model.pdparams`` (the best
weights) beside the exported program. Some ops (adaptive pooling, as in PP-LiteSeg) convert to ONNX only
when their input's height and width are fixed; an exported program keeps the shapes it was traced with, so
``save_static`` rebuilds the network from the config, loads the weights and traces it again at one height
and width (batch still free).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from stages.common.config import StageError
from stages.models.inference_model import MODEL_PREFIX, read_meta

CONFIG_NAME = "paddleseg.yml"
WEIGHTS_NAME = "model.pdparams"  # PaddleSeg's name: load_entire_model reads it


def without_pretrained(node):
    """The model config with every ``pretrained:`` emptied: the weights come from the trained model, and
    an export never downloads."""
    if isinstance(node, dict):
        return {key: None if key == "pretrained" else without_pretrained(value) for key, value in node.items()}
    if isinstance(node, list):
        return [without_pretrained(value) for value in node]
    return node


def can_rebuild(model_dir: str | Path) -> bool:
    model_dir = Path(model_dir)
    return (model_dir / CONFIG_NAME).is_file() and (model_dir / WEIGHTS_NAME).is_file()


def save_static(model_dir: str | Path, out_dir: str | Path, input_size: tuple[int, int]) -> None:
    """``out_dir``/inference.json + .pdiparams: the model of ``model_dir`` traced at ``input_size`` (height,
    width), any batch."""
    import paddle
    from paddle.static import InputSpec
    from paddleseg.cvlibs import Config, SegBuilder
    from paddleseg.cvlibs.config_checker import ConfigChecker

    model_dir = Path(model_dir)
    if not can_rebuild(model_dir):
        raise StageError(
            f"{model_dir}: no {CONFIG_NAME} and {WEIGHTS_NAME} to rebuild the model from "
            "(only train_paddleseg's models have them)"
        )
    document = yaml.safe_load((model_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    document["model"] = without_pretrained(document.get("model", {}))
    with tempfile.TemporaryDirectory(prefix="paddleseg-config-") as folder:
        path = Path(folder) / "config.yml"  # PaddleSeg's Config reads a file
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        try:
            # no checks of the training sections: only the model is built
            model = SegBuilder(Config(str(path), checker=ConfigChecker([], allow_update=False))).model
        except (AssertionError, RuntimeError, ValueError, KeyError, TypeError) as err:
            reason = " ".join(str(err).split())  # one line
            raise StageError(f"{model_dir / CONFIG_NAME}: PaddleSeg cannot rebuild the model: {reason}") from None
    model.set_state_dict(paddle.load(str(model_dir / WEIGHTS_NAME)))
    model.eval()
    spec = InputSpec([None, 3, *(int(side) for side in input_size)], "float32", "image")
    paddle.jit.save(model, str(Path(out_dir) / MODEL_PREFIX), input_spec=[spec])


def architecture_label(model_dir: str | Path) -> str:
    """What a trainer's model folder holds, for people: its meta's architecture ("DoveNet", "UNet",
    "PPLiteSeg"), with the backbone of its PaddleSeg config when it has one ("PPLiteSeg (STDC1)")."""
    label = read_meta(model_dir).architecture or "unknown architecture"
    config = Path(model_dir) / CONFIG_NAME
    if config.is_file():
        backbone = (yaml.safe_load(config.read_text()).get("model") or {}).get("backbone") or {}
        if isinstance(backbone, dict) and backbone.get("type"):
            label += f" ({backbone['type']})"
    return label
