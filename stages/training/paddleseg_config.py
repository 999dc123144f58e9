"""The PaddleSeg config train_paddleseg trains from, and what PaddleSeg builds from it.

The template (train_paddleseg.config, default conf/paddleseg/unet.yml) has its ``${...}`` filled from
params and the labels file; PaddleSeg (``paddleseg.cvlibs.Config`` + ``SegBuilder``) then builds the model,
the datasets and their transforms, the loss, the optimizer and its LR schedule (``Parts``). Also read from
the resolved config: the size and normalisation the model sees at validation and predict time.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle
import yaml
from omegaconf import OmegaConf

from stages.common.config import StageError
from stages.data.labels import read_labels
from stages.training import paddleseg_compat
from stages.training.paddleseg_data import CACHE_MB, cached
from stages.training.photo_cache import MB

paddleseg_compat.apply()
from paddleseg.cvlibs import Config, SegBuilder  # noqa: E402  (after the compatibility fixes)

STAGE = "train_paddleseg"  # the stage that trains from these configs, and its params block


def resolve_config(template: str | Path, cfg, extra: dict) -> dict:
    """The PaddleSeg config ``template`` with its ``${...}`` filled from ``cfg`` and ``extra`` (top-level keys)."""
    template = Path(template)
    if not template.is_file():
        raise StageError(f"{template}: PaddleSeg config template not found")
    try:
        document = yaml.safe_load(template.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise StageError(f"{template}: not valid YAML ({err})") from None
    values = OmegaConf.to_container(cfg, resolve=True)
    clash = set(extra) & set(values)
    if clash:
        raise StageError(f"params.yaml has top-level keys {sorted(clash)} that the template's values use")
    root = OmegaConf.create({**values, **extra, "_paddleseg": document})
    try:
        return OmegaConf.to_container(root._paddleseg, resolve=True)
    except Exception as err:  # noqa: BLE001 - omegaconf's interpolation errors share no useful base class
        raise StageError(f"{template}: cannot fill in its ${{...}} values: {err}") from None


def dump_config(document: dict) -> str:
    return yaml.safe_dump(document, sort_keys=False)


def resolved_document(cfg, labels=None) -> dict:
    """The PaddleSeg config template filled from params and the labels file."""
    labels = labels or read_labels(cfg.data.labels)
    return resolve_config(
        cfg.train_paddleseg.config, cfg, {"labels": {"num_classes": labels.num_classes, "names": list(labels.names)}}
    )


def check_batch_size(document: dict, template, processes: int, train_photos: int) -> None:
    """A template that does not take the adapted batch size (stages.training.adaptation) may not fit."""
    batch = int(document["batch_size"])
    if not processes <= batch <= train_photos:
        raise StageError(
            f"{template}: batch_size {batch} does not fit {train_photos} training photos "
            f"in {processes} process(es); write batch_size: ${{train_paddleseg.batch_size}} there"
        )


@dataclass
class Parts:
    """What SegBuilder makes from one PaddleSeg config."""

    config: Config
    model: paddle.nn.Layer
    train_dataset: paddle.io.Dataset
    val_dataset: paddle.io.Dataset
    optimizer: paddle.optimizer.Optimizer
    losses: dict

    @property
    def lr_scheduler(self):
        return self.optimizer._learning_rate


def build(document: dict, cache_bytes: int = CACHE_MB * MB) -> Parts:
    """Build PaddleSeg's components from a resolved config (Config needs a file, so one is written); its
    datasets cache their photos within ``cache_bytes`` each (see CachedDataset)."""
    with tempfile.TemporaryDirectory(prefix="paddleseg-config-") as folder:
        path = Path(folder) / "config.yml"
        path.write_text(dump_config(document), encoding="utf-8")
        try:
            config = Config(str(path))
            builder = SegBuilder(config)
            return Parts(
                config,
                builder.model,
                cached(builder.train_dataset, cache_bytes),
                cached(builder.val_dataset, cache_bytes),
                builder.optimizer,
                builder.loss,
            )
        except (AssertionError, RuntimeError, ValueError, FileNotFoundError, KeyError, TypeError) as err:
            raise StageError(f"PaddleSeg could not build from the config: {err}") from None


def normalisation(document: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the validation Normalize transform (PaddleSeg's default 0.5), as 3 channels."""
    for transform in document.get("val_dataset", {}).get("transforms", []):
        if transform.get("type") == "Normalize":
            mean, std = transform.get("mean", [0.5]), transform.get("std", [0.5])
            return tuple(float(v) for v in np.broadcast_to(mean, 3)), tuple(float(v) for v in np.broadcast_to(std, 3))
    return (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)  # no Normalize: the model sees raw 0..255


def input_size_of(document: dict, params) -> tuple[int, int]:
    """(height, width) the model sees at validation and predict time: the val Resize target, else input_size."""
    for transform in document.get("val_dataset", {}).get("transforms", []):
        if transform.get("type") == "Resize" and "target_size" in transform:
            width, height = transform["target_size"]
            return int(height), int(width)
    return int(params.input_size), int(params.input_size)


def parameter_counts(model) -> dict:
    total = sum(int(p.numel()) for p in model.parameters())
    trainable = sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)
    return {"total": total, "trainable": trainable}
