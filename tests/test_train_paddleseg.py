"""train_paddleseg: the PaddleSeg config, input checks, a real tiny training run tracked in a real MLflow
store, the exported model, and a resume after a real kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import mlflow.paddle
import numpy as np
import paddle
import pytest
import yaml
from PIL import Image

from stages.common.config import StageError, load_params
from stages.data.images import save_label_png
from stages.data.labels import read_labels
from stages.data.split_lists import read_split
from stages.train_paddleseg import STAGE, output_paths, run
from stages.training.paddleseg_checkpoint import checkpoint_iters, rename_optimizer_state
from stages.training.paddleseg_config import resolve_config
from stages.training.paddleseg_data import IterationBatches
from stages.training.paddleseg_inputs import fingerprint
from stages.training.summary import PLOT_COLUMNS

from tiny_pipeline import flat_keys, make_dataset, metrics_schema

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tiny, fast settings (the smoke profile's spirit, explicit so the test does not depend on it).
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
]  # one process, whatever the profile says
SIZES = {"dove_a": (30, 40), "dove_b": (47, 33), "dove_c": (64, 48), "dove_d": (21, 26), "empty_e": (36, 36)}


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> list[str]:
    """One SQLite MLflow store for the session (creating one costs seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # creates the tables once
    return [f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={root / 'mlruns'}"]


@pytest.fixture
def overrides(tmp_path, mlflow_store) -> list[str]:
    """A tiny processed dataset + split lists, every output under tmp_path, the session's store, TINY."""
    return [
        *make_dataset(tmp_path / "data", SIZES),
        f"paths.checkpoints_dir={tmp_path / 'checkpoints'}",
        *mlflow_store,
        *TINY,
    ]


@pytest.fixture
def cfg_for(overrides):
    def make(*extra: str):
        return load_params([*overrides, *extra], REPO_ROOT)

    return make


def nothing_written(cfg) -> bool:
    paths = output_paths(cfg)
    return not any(paths[key].exists() for key in ("model_dir", "checkpoint_dir", "metrics", "plots"))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- the PaddleSeg config --------------------------------------------------------------------------


def test_template_is_filled_from_params_and_labels(cfg_for):
    cfg = cfg_for("train_paddleseg.lr=0.005")
    document = resolve_config(cfg.train_paddleseg.config, cfg, {"labels": {"num_classes": 2}})
    assert document["batch_size"] == 2 and document["iters"] == 4
    assert document["model"] == {"type": "UNet", "num_classes": 2, "use_deconv": False, "pretrained": None}
    train, val = document["train_dataset"], document["val_dataset"]
    assert train["dataset_root"] == cfg.data.processed_dir and val["dataset_root"] == cfg.data.processed_dir
    assert train["train_path"] == f"{cfg.data.splits_dir}/train.txt"
    assert val["val_path"] == f"{cfg.data.splits_dir}/val.txt"
    assert train["num_classes"] == val["num_classes"] == 2 and train["separator"] == " "
    crop = next(t for t in train["transforms"] if t["type"] == "RandomPaddingCrop")
    assert crop["crop_size"] == [32, 32]
    assert val["transforms"][0] == {"type": "Resize", "target_size": [32, 32]}
    assert document["lr_scheduler"]["learning_rate"] == 0.005
    assert document["optimizer"]["type"] == "AdamW"
    yaml.safe_load(yaml.safe_dump(document))  # plain YAML, no interpolations left


def test_template_with_an_unknown_value_is_refused(cfg_for, tmp_path):
    template = tmp_path / "bad.yml"
    template.write_text("iters: ${train_paddleseg.no_such_key}\n")
    with pytest.raises(StageError, match=r"bad.yml.*no_such_key"):
        resolve_config(template, cfg_for(), {"labels": {"num_classes": 2}})


def test_batches_follow_a_seeded_order_and_resume_where_they_stopped():
    full = list(IterationBatches(num_samples=10, batch_size=3, iters=7, seed=5))
    assert len(full) == 7 and all(len(batch) == 3 for batch in full)
    first_epoch = [index for batch in full[:3] for index in batch]
    assert sorted(first_epoch) == sorted(set(first_epoch))  # an epoch has no repeats
    assert list(IterationBatches(10, 3, 7, start=4, seed=5)) == full[4:]
    assert list(IterationBatches(10, 3, 7, seed=6)) != full


def test_optimizer_state_follows_parameters_renamed_by_another_process():
    saved = {
        "conv2d_5.w_0_moment1_0": 1,
        "conv2d_57.w_0_moment1_0": 2,
        "conv2d_5.w_0_beta1_pow_acc_0": 3,
        "LR_Scheduler": {"last_epoch": 4},
        "master_weights": {"conv2d_5.w_0": 5},
    }
    renamed = rename_optimizer_state(saved, {"conv2d_5.w_0": "conv2d_0.w_0", "conv2d_57.w_0": "conv2d_1.w_0"})
    assert renamed == {
        "conv2d_0.w_0_moment1_0": 1,
        "conv2d_1.w_0_moment1_0": 2,
        "conv2d_0.w_0_beta1_pow_acc_0": 3,
        "LR_Scheduler": {"last_epoch": 4},
        "master_weights": {"conv2d_0.w_0": 5},
    }


# --- input checks ---------------------------------------------------------------------------------


def test_bad_label_values_are_refused(cfg_for):
    cfg = cfg_for()
    label = np.zeros((47, 33), np.uint8)
    label[5:9, 5:9] = 7  # 2 classes: 7 is neither a class id nor 255
    save_label_png(Path(cfg.data.processed_dir) / "dove_b" / "label.png", label)
    with pytest.raises(StageError, match=r"dove_b/label\.png.*\[7\]"):
        run(cfg)
    assert nothing_written(cfg)


def test_label_size_mismatch_is_refused(cfg_for):
    cfg = cfg_for()
    save_label_png(Path(cfg.data.processed_dir) / "dove_c" / "label.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(StageError, match=r"dove_c/label\.png.*differs"):
        run(cfg)
    assert nothing_written(cfg)


def test_a_template_batch_that_does_not_fit_the_train_split_is_refused(cfg_for, tmp_path):
    """batch_size written in the template, not ${train_paddleseg.batch_size}: it cannot be adapted."""
    template = tmp_path / "fixed.yml"
    text = (REPO_ROOT / "conf" / "paddleseg" / "unet.yml").read_text()
    template.write_text(text.replace("batch_size: ${train_paddleseg.batch_size}", "batch_size: 50"))
    cfg = cfg_for(f"train_paddleseg.config={template}")
    with pytest.raises(StageError, match=r"fixed\.yml: batch_size 50 .*5 training photos"):
        run(cfg)
    assert nothing_written(cfg)


def test_unreachable_tracking_server_fails_fast(cfg_for, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = cfg_for(f"mlflow.tracking_uri=http://127.0.0.1:{port}", "mlflow.connect_timeout_s=2")
    started = time.monotonic()
    with pytest.raises(StageError, match=f"127.0.0.1:{port}.*unreachable"):
        run(cfg)
    assert time.monotonic() - started < 15
    assert nothing_written(cfg)


def test_fingerprint_follows_training_inputs_only(cfg_for):
    cfg = cfg_for()
    labels = read_labels(cfg.data.labels)
    samples = read_split(cfg, "train") + read_split(cfg, "val")
    base = fingerprint(cfg, "config", labels, samples)
    assert (
        fingerprint(
            cfg_for("train_paddleseg.num_workers=2", "train_paddleseg.num_threads=2"), "config", labels, samples
        )
        == base
    )
    assert fingerprint(cfg_for("train_paddleseg.lr=0.5"), "config", labels, samples) != base
    assert fingerprint(cfg_for("seed=1"), "config", labels, samples) != base
    assert fingerprint(cfg, "another config", labels, samples) != base
    image = Path(cfg.data.processed_dir) / "dove_a" / "img.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)
    assert fingerprint(cfg, "config", labels, samples) != base


# --- real training ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_training_run_writes_every_output_and_tracks_it(cfg_for, monkeypatch):
    cfg = cfg_for()
    result = run(cfg)
    paths = output_paths(cfg)

    metrics = json.loads(paths["metrics"].read_text())
    assert flat_keys(metrics) == metrics_schema()  # train_paddle's keys, so dvc metrics compare them
    assert metrics["num_params"] == 13_404_354 and metrics["iters"] == 4 and metrics["best_iter"] in (2, 4)
    assert metrics["epochs"] == 2  # 4 iterations of batch 2 over 5 images: 2 batches an epoch
    assert 0 <= metrics["best_val_mIoU"] <= 1 and metrics["train_images_per_second"] > 0
    assert set(metrics["best_val_IoU"]) == {"_background_", "dove"}
    for key in ("best_val_acc", "best_val_kappa", "best_val_mDice"):
        assert key in metrics
    assert {k: result[k] for k in metrics if k != "best_val_IoU"} == {
        k: v for k, v in metrics.items() if k != "best_val_IoU"
    }

    curves = read_csv(paths["plots"])
    assert [row["iter"] for row in curves] == ["2", "4"] and [row["epoch"] for row in curves] == ["1", "2"]
    assert list(curves[0]) == list(PLOT_COLUMNS)
    assert max(float(row["val_mIoU"]) for row in curves) == pytest.approx(metrics["best_val_mIoU"], abs=1e-6)

    # keep_checkpoint_max=1: only the last iteration checkpoint, plus the best model, in PaddleSeg's layout.
    assert checkpoint_iters(paths["checkpoint_dir"]) == [4]
    assert (paths["checkpoint_dir"] / "best_model" / "model.pdparams").is_file()
    state = json.loads((paths["checkpoint_dir"] / "iter_4" / "state.json").read_text())
    assert state["completed"] is True and len(state["history"]) == 2

    # The model folder: best weights, the resolved PaddleSeg config, and an exported model that predicts
    # like the trained network, without the training code.
    model_dir = paths["model_dir"]
    resolved = yaml.safe_load((model_dir / "paddleseg.yml").read_text())
    assert resolved["model"]["type"] == "UNet" and resolved["iters"] == 4
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["input_size"] == [32, 32] and meta["class_names"] == ["_background_", "dove"]
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.5] * 3 and meta["architecture"] == "UNet"
    from stages.training.paddleseg_config import build

    parts = build(resolved)
    parts.model.set_state_dict(paddle.load(str(model_dir / "model.pdparams")))
    parts.model.eval()
    batch = paddle.rand([2, 3, 32, 32]) * 2 - 1
    loaded = paddle.jit.load(str(model_dir / "inference"))
    loaded.eval()
    np.testing.assert_allclose(loaded(batch).numpy(), parts.model(batch)[0].numpy(), atol=1e-4)
    from stages.models.inference_model import Predictor

    logits = Predictor(model_dir, use_gpu=False, cpu_threads=1).logits(batch.numpy())
    assert logits.shape == (2, 2, 32, 32)
    expected = parts.model(batch)[0].numpy()
    # oneDNN vs dygraph: float32 sums in another order, whose error grows with the logits (after 4 iterations
    # the eval-mode BatchNorm can leave them in the thousands); a wrong export is off by far more
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())

    # MLflow: one run with the loss per log interval and the scores per evaluation, params, tags, artifacts.
    run_info = json.loads(paths["run_id_file"].read_text())
    assert run_info["run_id"] == result["run_id"]
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    tracked = client.get_run(run_info["run_id"])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == STAGE
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "train/loss")] == [1, 2, 3, 4]
    for name in ("val/mIoU", "val/acc", "val/kappa", "val/mDice", "val/IoU/dove", "epoch"):
        assert [m.step for m in client.get_metric_history(tracked.info.run_id, name)] == [2, 4]
    assert [m.value for m in client.get_metric_history(tracked.info.run_id, "epoch")] == [1, 2]  # x axis for charts
    assert tracked.data.metrics["best_val_mIoU"] == pytest.approx(metrics["best_val_mIoU"])
    assert tracked.data.params["train_paddleseg.crop_size"] == "32"
    assert tracked.data.params["train_paddle.input_size"]  # the whole cfg: columns match train_paddle's
    assert {"stage", "git_commit", "data_version", "dvc_exp_name"} <= set(tracked.data.tags)
    assert tracked.data.tags["stage"] == STAGE
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id, "config")}
    artifacts |= {a.path for a in client.list_artifacts(tracked.info.run_id, "model")}
    assert {"config/paddleseg.yml", "config/params.yaml", "model/meta.json"} <= artifacts
    logged_models = mlflow.search_logged_models(
        experiment_ids=[tracked.info.experiment_id],
        filter_string=f"source_run_id = '{tracked.info.run_id}'",
        output_format="list",
    )
    assert [m.name for m in logged_models] == ["paddleseg_model"]
    assert run_info["registered_model"]["name"] == cfg.mlflow.registered_models.paddleseg == "doveseg-paddleseg"
    assert (
        client.get_model_version("doveseg-paddleseg", run_info["registered_model"]["version"]).run_id
        == result["run_id"]
    )

    # A finished run is not "resumed": a rerun trains afresh, in a new MLflow run.
    again = run(cfg)
    assert again["resumed_from_iter"] == 0 and again["run_id"] != result["run_id"]
    again_version = json.loads(paths["run_id_file"].read_text())["registered_model"]["version"]
    assert int(again_version) == int(run_info["registered_model"]["version"]) + 1  # a version per training run

    # The registered version loads with MLflow's paddle flavour and predicts as the trained network did.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.mlflow.tracking_uri)
    loaded = mlflow.paddle.load_model(f"models:/doveseg-paddleseg/{run_info['registered_model']['version']}")
    np.testing.assert_allclose(loaded(batch).numpy(), expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


@pytest.mark.slow
def test_the_same_seed_trains_the_same_model(cfg_for, tmp_path):
    """PaddleSeg draws a model's initial weights when it builds it: seeded before that, two runs with the same
    seed and data give the same weights (they did not: every run started from other random weights)."""
    weights = []
    for attempt in ("a", "b"):
        cfg = cfg_for(f"paths.models_dir={tmp_path / attempt}", f"paths.checkpoints_dir={tmp_path / attempt / 'ck'}")
        run(cfg)
        state = paddle.load(str(output_paths(cfg)["model_dir"] / "model.pdparams"))
        weights.append({key: value.numpy() for key, value in state.items()})
    assert list(weights[0]) == list(weights[1])
    for key, value in weights[0].items():  # (a second build in one process gives other parameter names)
        np.testing.assert_array_equal(value, weights[1][key], err_msg=key)


def test_the_weight_average_is_validated_and_kept(cfg_for):
    """weight_average > 0: the best model is the average at its iteration, not the raw weights trained on."""
    cfg = cfg_for("train_paddleseg.weight_average=0.5", "train_paddleseg.keep_checkpoint_max=2")
    metrics = run(cfg)
    folder = output_paths(cfg)["checkpoint_dir"]
    assert checkpoint_iters(folder) == [2, 4]
    best = paddle.load(str(folder / "best_model" / "model.pdparams"))
    at_best = folder / f"iter_{metrics['best_iter']}"
    average, raw = (paddle.load(str(at_best / name)) for name in ("average.pdparams", "model.pdparams"))
    assert best.keys() == average.keys()
    for key in best:
        np.testing.assert_array_equal(best[key].numpy(), average[key].numpy())
    assert any(not np.array_equal(best[key].numpy(), raw[key].numpy()) for key in best)
    assert json.loads((folder / "iter_4" / "state.json").read_text())["average_steps"] == 4
    with pytest.raises(StageError, match=r"weight_average"):
        run(cfg_for("train_paddleseg.weight_average=1"))


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(overrides, cfg_for):
    """Start the stage as a process, SIGKILL it after its first checkpoint, rerun: it continues."""
    longer = ["train_paddleseg.iters=12"]
    cfg = cfg_for(*longer)
    paths = output_paths(cfg)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.train_paddleseg", *overrides, *longer],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not checkpoint_iters(paths["checkpoint_dir"]):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done = checkpoint_iters(paths["checkpoint_dir"])
    assert done and done[-1] < 12, "the process finished before it could be killed"
    state = json.loads((paths["checkpoint_dir"] / f"iter_{done[-1]}" / "state.json").read_text())
    assert not state["completed"]
    assert not paths["model_dir"].exists() and not paths["metrics"].exists()  # nothing half-done

    result = run(cfg)
    assert result["resumed_from_iter"] == done[-1] and result["iters"] == 12
    assert [int(row["iter"]) for row in read_csv(paths["plots"])] == [2, 4, 6, 8, 10, 12]
    assert result["run_id"] == state["run_id"]  # the same MLflow run, continued
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    assert {m.step for m in client.get_metric_history(state["run_id"], "val/mIoU")} == {2, 4, 6, 8, 10, 12}
    assert client.get_run(state["run_id"]).info.status == "FINISHED"
    assert checkpoint_iters(paths["checkpoint_dir"]) == [12]  # keep_checkpoint_max=1 across the resume
    final = json.loads((paths["checkpoint_dir"] / "iter_12" / "state.json").read_text())
    assert final["average_steps"] == 12  # the weight average went on from the checkpoint's, not from scratch

    # Other params: the old checkpoints are not used.
    other = run(cfg_for(*longer, "train_paddleseg.lr=0.001", "train_paddleseg.iters=2"))
    assert other["resumed_from_iter"] == 0 and other["run_id"] != state["run_id"]
