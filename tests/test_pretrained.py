"""Pretrained weights in a PaddleSeg config: checked before training starts (a URL offline fails at once, in one
line; a missing local file names its key), and a local file made by a short training run loads and scores
what it scored when saved."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import paddle
import pytest

from stages.common.config import StageError, load_params
from stages.train_paddleseg import output_paths, run
from stages.training import pretrained
from stages.training.paddleseg_config import build, resolve_config
from stages.training.paddleseg_loop import evaluate

from tiny_pipeline import make_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
UNET = REPO_ROOT / "conf" / "paddleseg" / "unet.yml"
TINY = [
    "train_paddleseg.input_size=32",
    "train_paddleseg.crop_size=32",
    "train_paddleseg.iters=4",
    "train_paddleseg.batch_size=2",
    "train_paddleseg.eval_interval=2",
    "train_paddleseg.log_interval=1",
    "train_paddleseg.keep_checkpoint_max=1",
    "train_paddleseg.num_threads=1",
    "train_paddleseg.distributed.nproc=1",
]


def closed_port() -> int:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unet_with(tmp_path: Path, model_pretrained: str = "null", backbone: str | None = None) -> Path:
    """conf/paddleseg/unet.yml with the model's pretrained set (and a nested one, as a backbone's would be)."""
    text = UNET.read_text().replace("  pretrained: null", f"  pretrained: {model_pretrained}")
    if backbone is not None:  # UNet has no backbone: a key PaddleSeg would pass on, checked all the same
        text = text.replace("  use_deconv: false", f"  use_deconv: false\n  backbone_cfg:\n    pretrained: {backbone}")
    template = tmp_path / "unet_pretrained.yml"
    template.write_text(text)
    return template


@pytest.fixture
def overrides(tmp_path) -> list[str]:
    return [
        *make_dataset(tmp_path / "data"),
        f"paths.checkpoints_dir={tmp_path / 'checkpoints'}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"mlflow.artifact_location={tmp_path / 'mlruns'}",
        *TINY,
    ]


def test_every_pretrained_of_the_model_is_found_with_its_key():
    document = {
        "model": {
            "type": "PPLiteSeg",
            "pretrained": None,
            "backbone": {"type": "STDC1", "pretrained": "https://example.org/STDCNet1.tar.gz"},
            "heads": [{"pretrained": "a.pdparams"}],
        }
    }
    assert pretrained.pretrained_entries(document["model"]) == [
        ("model.backbone.pretrained", "https://example.org/STDCNet1.tar.gz"),
        ("model.heads[0].pretrained", "a.pdparams"),
    ]


def test_an_unreachable_url_fails_at_once_in_one_line_before_anything_starts(tmp_path, overrides, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    url = f"http://127.0.0.1:{closed_port()}/paddleseg/UNet/model.pdparams"
    template = unet_with(tmp_path, backbone=url)
    cfg = load_params([*overrides, f"train_paddleseg.config={template}"], REPO_ROOT)
    started = time.monotonic()
    with pytest.raises(StageError) as caught:
        run(cfg)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{template}: model.backbone_cfg.pretrained is the URL {url}, which cannot be downloaded")
    assert "give its local path instead (model.backbone_cfg.pretrained: path/to/model.pdparams)" in message
    paths = output_paths(cfg)
    assert not any(paths[key].exists() for key in ("model_dir", "checkpoint_dir", "metrics", "plots"))
    assert not mlflow.MlflowClient(cfg.mlflow.tracking_uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(cfg.mlflow.tracking_uri).search_experiments()]
    )

    # From the command line (2 processes asked for: it stops before launching them): the line, no traceback.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.train_paddleseg",
            *overrides,
            f"train_paddleseg.config={template}",
            "train_paddleseg.distributed.nproc=2",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"error: {message}" in done.stderr.splitlines()


def test_a_cached_download_needs_no_network(tmp_path, monkeypatch):
    from paddleseg.utils.env import seg_env

    monkeypatch.setattr(seg_env, "PRETRAINED_MODEL_HOME", str(tmp_path))
    url = f"http://127.0.0.1:{closed_port()}/bisenet/STDCNet1.tar.gz"
    (tmp_path / "STDCNet1").mkdir()
    (tmp_path / "STDCNet1" / "model.pdparams").write_bytes(b"weights")  # where PaddleSeg unpacked it earlier
    assert pretrained.check_pretrained({"model": {"backbone": {"pretrained": url}}}, "x.yml") == [url]


def test_a_local_file_that_does_not_exist_names_its_key(tmp_path, overrides):
    template = unet_with(tmp_path, model_pretrained=str(tmp_path / "nowhere.pdparams"))
    cfg = load_params([*overrides, f"train_paddleseg.config={template}"], REPO_ROOT)
    with pytest.raises(
        StageError,
        match=rf"^{template}: model.pretrained: {tmp_path}/nowhere.pdparams is not a "
        "file; give an existing .pdparams file, a URL, or null",
    ):
        run(cfg)
    assert not output_paths(cfg)["model_dir"].exists()


@pytest.mark.slow
def test_weights_from_a_short_training_run_load_and_score_what_they_scored(tmp_path, overrides, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_params(overrides, REPO_ROOT)
    trained = run(cfg)
    weights = output_paths(cfg)["model_dir"] / "model.pdparams"

    template = unet_with(tmp_path, model_pretrained=str(weights))
    started_cfg = load_params([*overrides, f"train_paddleseg.config={template}"], REPO_ROOT)
    document = resolve_config(template, started_cfg, {"labels": {"num_classes": 2}})
    assert pretrained.check_pretrained(document, template) == [str(weights)]
    parts = build(document)  # PaddleSeg loads model.pretrained while it builds the model
    saved = paddle.load(str(weights))
    for key, value in parts.model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), saved[key].numpy())
    scores = evaluate(parts.model, parts.val_dataset, 2)  # the same val data, the project's evaluation
    assert scores["mIoU"] >= trained["best_val_mIoU"] - 1e-9
    best = json.loads((Path(started_cfg.paths.checkpoints_dir) / "paddleseg" / "best_model" / "score.json").read_text())
    assert scores["mIoU"] == pytest.approx(best["mIoU"], abs=1e-9)
