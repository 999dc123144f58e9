"""What a trainer's checkpoint was made from, as one hash: its params (less those that only change how fast
it runs), the seed, the labels, the split lists, every photo's and label's bytes and the code that computes.
A checkpoint whose fingerprint differs is not resumed: the run trains from scratch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from omegaconf import OmegaConf

from stages.data.split_lists import split_file


def inputs_fingerprint(
    cfg, stage: str, labels, samples, code: Iterable[ModuleType], runtime_params: Iterable[str] = (), **extra
) -> str:
    """The hash of ``cfg[stage]`` less ``runtime_params``, ``cfg.seed``, the label names and ``extra`` (JSON),
    then the train and val split files, the bytes of ``samples`` (image, label) and the source of ``code``."""
    skipped = set(runtime_params)
    params = {k: v for k, v in OmegaConf.to_container(cfg[stage], resolve=True).items() if k not in skipped}
    digest = hashlib.sha256(
        json.dumps({"params": params, "seed": int(cfg.seed), "labels": labels.names, **extra}, sort_keys=True).encode()
    )
    for name in ("train", "val"):
        digest.update(split_file(cfg, name).read_bytes())
    for sample in samples:
        digest.update(Path(sample.image).read_bytes())
        digest.update(Path(sample.label).read_bytes())
    for module in code:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()
