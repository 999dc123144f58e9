"""train_paddle: transforms, input checks, a real tiny training run tracked in a real MLflow store, resume."""

from __future__ import annotations

import csv
import json
import socket
import time
from pathlib import Path

import mlflow
import numpy as np
import paddle
import pytest
from PIL import Image

from stages.common.config import StageError, load_params
from stages.data.images import save_label_png
from stages.data.labels import read_labels
from stages.data.split_lists import read_split
from stages.train_paddle import STAGE, output_paths, run
from stages.training.dataset import Augment, EpochSampler, SegDataset, hflip, normalize, random_crop, resize_pair
from stages.training.device import math_threads
from stages.training.dovenet_checkpoint import load_checkpoint
from stages.training.dovenet_inputs import fingerprint
from stages.training.loss import SegLoss
from stages.training.optimizer import build_optimizer
from stages.training.summary import PLOT_COLUMNS
from stages.training.validation_metric import SegMetric
from stages.training.weight_average import WeightAverage

from tiny_pipeline import flat_keys, make_dataset, metrics_schema

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tiny, fast training settings (the smoke profile's spirit, explicit so the test does not depend on it).
TINY = [
    "train_paddle.input_size=32",
    "train_paddle.crop_size=32",
    "train_paddle.epochs=2",
    "train_paddle.batch_size=4",
    "train_paddle.num_threads=1",
    "train_paddle.lr=0.003",
]
SIZES = {
    "dove_a": (30, 40),
    "dove_b": (47, 33),
    "dove_c": (64, 48),
    "dove_d": (21, 26),
    "empty_e": (36, 36),
    "dove_f": (40, 40),
}


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> list[str]:
    """One SQLite MLflow store for the session (creating one costs seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # creates the tables once
    return [f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={root / 'mlruns'}"]


@pytest.fixture
def data_overrides(tmp_path) -> list[str]:
    """A tiny processed dataset + split lists, and every output of the stage, under tmp_path."""
    return make_dataset(tmp_path / "data", SIZES) + [f"paths.checkpoints_dir={tmp_path / 'checkpoints'}"]


@pytest.fixture
def cfg_for(data_overrides, mlflow_store):
    def make(*overrides: str):
        return load_params([*data_overrides, *mlflow_store, *TINY, *overrides], REPO_ROOT)

    return make


def nothing_written(cfg) -> bool:
    paths = output_paths(cfg)
    return not any(paths[key].exists() for key in ("model_dir", "checkpoint_dir", "metrics", "plots"))


# --- transforms --------------------------------------------------------------------------------------


def blocky_pair(rng, height=60, width=80):
    """A label of random blocks and an image whose red channel encodes it (255: ignore -> blue)."""
    coarse = rng.choice([0, 1, 2, 255], size=(height // 10, width // 10))
    label = np.kron(coarse, np.ones((10, 10), dtype=np.int64)).astype(np.uint8)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.where(label == 255, 0, label * 100)
    image[..., 2] = np.where(label == 255, 200, 0)
    return image, label


def decode_label(image):
    """The label an image from blocky_pair encodes."""
    red, blue = image[..., 0].astype(int), image[..., 2].astype(int)
    return np.where(blue > 100, 255, np.clip(np.rint(red / 100), 0, 2)).astype(np.uint8)


def test_resize_uses_nearest_neighbour_for_labels():
    image, label = blocky_pair(np.random.default_rng(0))
    for size in (16, 33, 128):
        resized_image, resized_label = resize_pair(image, label, size)
        assert resized_image.shape == (size, size, 3) and resized_label.shape == (size, size)
        assert set(np.unique(resized_label)) <= set(np.unique(label))  # no blended, made-up class ids


def test_crop_and_flip_keep_image_and_label_aligned():
    rng = np.random.default_rng(1)
    image, label = blocky_pair(rng)
    assert np.array_equal(decode_label(image), label)
    for size in range(10, 60, 3):
        crop_image, crop_label = random_crop(image, label, rng, size)
        assert crop_label.shape == (size, size)
        assert np.array_equal(decode_label(crop_image), crop_label)
        flip_image, flip_label = hflip(crop_image, crop_label)
        assert np.array_equal(decode_label(flip_image), flip_label)
        assert np.array_equal(flip_label, crop_label[:, ::-1])


def test_augmented_samples_stay_aligned_through_resizing():
    image, label = blocky_pair(np.random.default_rng(2))
    dataset = SegDataset([], 48, (0, 0, 0), (1, 1, 1), Augment(crop_size=32, scale_range=(0.5, 1.5), color_jitter=0.0))
    for index in range(20):
        out_image, out_label = dataset.transform(image, label, np.random.default_rng(index))
        assert out_image.shape == (32, 32, 3) and out_label.dtype == np.uint8
        # Bilinear image vs nearest label disagree only on block edges.
        assert (decode_label(out_image) == out_label).mean() > 0.9
        again_image, again_label = dataset.transform(image, label, np.random.default_rng(index))
        assert np.array_equal(again_image, out_image) and np.array_equal(again_label, out_label)


def test_colour_jitter_changes_only_the_image_and_normalize_is_chw():
    image, label = blocky_pair(np.random.default_rng(3))
    dataset = SegDataset([], 32, (0.5,) * 3, (0.5,) * 3, Augment(scale_range=(1, 1), flip_prob=0, color_jitter=0.5))
    plain_image, plain_label = resize_pair(image, label, 32)
    out_image, out_label = dataset.transform(image, label, np.random.default_rng(0))
    assert np.array_equal(out_label, plain_label) and not np.array_equal(out_image, plain_image)
    chw = normalize(np.full((4, 5, 3), 255, np.uint8), (0.5,) * 3, (0.5,) * 3)
    assert chw.shape == (3, 4, 5) and chw.dtype == np.float32 and np.allclose(chw, 1.0)


def test_dataset_items_are_seeded_by_epoch(cfg_for):
    cfg = cfg_for()
    samples = read_split(cfg, "train")
    dataset = SegDataset(samples, 32, (0.5,) * 3, (0.5,) * 3, Augment(crop_size=16), seed=7)
    first = dataset[0]
    assert first[0].shape == (3, 16, 16) and first[1].shape == (1, 16, 16) and first[1].dtype == np.int64
    assert np.array_equal(dataset[0][0], first[0])
    dataset.set_epoch(1)
    assert not np.array_equal(dataset[0][0], first[0])
    val = SegDataset(samples, 32, (0.5,) * 3, (0.5,) * 3)
    assert val[1][0].shape == (3, 32, 32) and np.array_equal(val[1][0], val[1][0])


def test_epoch_sampler_orders_and_caps():
    sampler = EpochSampler(10, shuffle=True, seed=3, max_samples=4)
    epoch_0 = list(sampler)
    assert len(epoch_0) == len(sampler) == 4 and len(set(epoch_0)) == 4
    assert list(sampler) == epoch_0
    sampler.set_epoch(1)
    assert list(sampler) != epoch_0
    assert sorted(EpochSampler(10, shuffle=True, seed=3)) == list(range(10))
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


# --- loss and metric ------------------------------------------------------------------------------------


def logits_for(label: np.ndarray, confidence: float = 20.0) -> paddle.Tensor:
    """N x 2 x H x W scores that predict ``label`` (ids 0/1) with the given margin."""
    one = (label == 1).astype(np.float32)
    return paddle.to_tensor(np.concatenate([1 - one, one], axis=1) * confidence)


def test_loss_ignores_255_and_dice_rewards_overlap():
    label = np.zeros((2, 1, 8, 8), np.int64)
    label[:, :, 2:5, 2:5] = 1
    loss = SegLoss(num_classes=2, dice_weight=1.0)
    assert float(loss(logits_for(label), paddle.to_tensor(label))) < 0.01
    wrong = label.copy()
    wrong[:, :, 6:, 6:] = 255  # ignored pixels: any prediction there is free
    scores = logits_for(np.where(wrong == 255, 1, label))
    assert float(loss(scores, paddle.to_tensor(wrong))) < 0.01
    miss = logits_for(np.zeros_like(label))  # predicts no dove at all
    plain = SegLoss(num_classes=2, dice_weight=0.0)
    # Dice adds about half (one of two classes has no overlap) on top of the cross-entropy.
    extra = float(loss(miss, paddle.to_tensor(label))) - float(plain(miss, paddle.to_tensor(label)))
    assert 0.4 < extra < 0.6


def test_metric_adapter_scores_argmax_predictions():
    label = np.zeros((1, 1, 4, 4), np.int64)
    label[..., :2] = 1
    label[0, 0, 0, 0] = 255
    metric = SegMetric(2)
    metric.update(*[t.numpy() for t in metric.compute(logits_for(label == 1), paddle.to_tensor(label))])
    assert metric.accumulate() == [1.0, 1.0]
    metric.reset()
    predicted = label.copy()
    predicted[..., 1] = 0  # half the dove missed
    metric.update(*[t.numpy() for t in metric.compute(logits_for(predicted), paddle.to_tensor(label))])
    miou, acc = metric.accumulate()
    assert acc == pytest.approx(11 / 15) and miou == pytest.approx((3 / 7 + 8 / 12) / 2)


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop", "momentum"])
@pytest.mark.parametrize("schedule,warmup", [("cosine", 0), ("constant", 2)])
def test_every_optimizer_and_schedule_steps_and_round_trips(cfg_for, optimizer, schedule, warmup):
    params = cfg_for(
        f"train_paddle.optimizer={optimizer}",
        f"train_paddle.lr_schedule={schedule}",
        f"train_paddle.warmup_steps={warmup}",
        "train_paddle.lr=0.1",
    ).train_paddle
    layer = paddle.nn.Linear(2, 1)
    opt = build_optimizer(params, layer.parameters(), total_steps=10)
    before = layer.weight.numpy().copy()
    for _ in range(2):  # warm-up starts from a learning rate of 0
        layer(paddle.ones([1, 2])).sum().backward()
        opt.step()
        opt.clear_grad()
        if isinstance(opt._learning_rate, paddle.optimizer.lr.LRScheduler):
            opt._learning_rate.step()  # what paddle.Model.fit's LRScheduler callback does each batch
    assert not np.array_equal(layer.weight.numpy(), before)
    restored = build_optimizer(params, layer.parameters(), total_steps=10)
    restored.set_state_dict(opt.state_dict())
    assert restored.get_lr() == pytest.approx(opt.get_lr())


# --- input checks: clear errors, before anything is written --------------------------------------------


def test_empty_train_split_is_refused(cfg_for):
    cfg = cfg_for()
    (Path(cfg.data.splits_dir) / "train.txt").write_text("\n")
    with pytest.raises(StageError, match=r"train\.txt.*empty"):
        run(cfg)
    assert nothing_written(cfg)


def test_bad_label_values_are_refused(cfg_for):
    cfg = cfg_for()
    label_file = Path(cfg.data.processed_dir) / "dove_b" / "label.png"
    label = np.zeros((47, 33), np.uint8)
    label[5:9, 5:9] = 7  # 2 classes: 7 is neither a class id nor 255
    save_label_png(label_file, label)
    with pytest.raises(StageError, match=r"dove_b/label\.png.*\[7\]"):
        run(cfg)
    assert nothing_written(cfg)


def test_label_size_mismatch_is_refused(cfg_for):
    cfg = cfg_for()
    save_label_png(Path(cfg.data.processed_dir) / "dove_c" / "label.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(StageError, match=r"dove_c/label\.png.*differs"):
        run(cfg)
    assert nothing_written(cfg)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train_paddle.input_size=40", "input_size must be a positive multiple of 16"),
        ("train_paddle.crop_size=24", "crop_size must be a positive multiple of 16"),
        ("train_paddle.crop_size=64", "crop_size must fit"),
        ("train_paddle.optimizer=adam", "optimizer must be one of"),
        ("train_paddle.lr_schedule=step", "lr_schedule must be one of"),
    ],
)
def test_sizes_are_checked(cfg_for, override, message):
    cfg = cfg_for(override)
    with pytest.raises(StageError, match=message):
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


def test_weight_average_follows_the_weights_and_swaps_in_and_out():
    net = paddle.nn.Sequential(paddle.nn.Linear(2, 2), paddle.nn.BatchNorm1D(2))
    weight = net[0].weight
    average = WeightAverage(0.5)
    weight.set_value(paddle.ones([2, 2]))
    average.update(net)  # the first step copies (ramp (1 + 0) / 10 -> but no average yet)
    weight.set_value(paddle.full([2, 2], 3.0))
    average.update(net)  # rate min(0.5, 2 / 11) = 0.18: 1 * 0.18 + 3 * 0.82
    expected = 1 * (2 / 11) + 3 * (9 / 11)
    np.testing.assert_allclose(average.average["0.weight"].numpy(), expected, rtol=1e-6)
    average.swap_in(net)
    np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(average.raw_weights(net)["0.weight"].numpy(), 3.0)
    average.swap_out(net)
    np.testing.assert_allclose(weight.numpy(), 3.0)
    off = WeightAverage(0.0, average.average)
    off.swap_in(net)  # decay 0: the raw weights are validated
    np.testing.assert_allclose(weight.numpy(), 3.0)


def test_math_threads_halve_the_cores_under_to_static_only(cfg_for, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    for name in ("PADDLE_TRAINERS_NUM", "PADDLE_TRAINER_ID", "PADDLE_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert math_threads(cfg_for("train_paddle.num_threads=0").train_paddle) == 4
    assert math_threads(cfg_for("train_paddle.num_threads=0", "train_paddle.to_static=false").train_paddle) == 8
    assert math_threads(cfg_for("train_paddle.num_threads=3").train_paddle) == 3
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "2")  # two processes on this machine share its cores
    assert math_threads(cfg_for("train_paddle.num_threads=0").train_paddle) == 2


# --- checkpoint fingerprint ------------------------------------------------------------------------------


def test_fingerprint_follows_training_inputs_only(cfg_for):
    cfg = cfg_for()
    labels = read_labels(cfg.data.labels)
    samples = read_split(cfg, "train") + read_split(cfg, "val")
    base = fingerprint(cfg, labels, samples)
    assert (
        fingerprint(
            cfg_for("train_paddle.num_workers=2", "train_paddle.num_threads=2", "train_paddle.distributed.nproc=2"),
            labels,
            samples,
        )
        == base
    )
    assert fingerprint(cfg_for("train_paddle.lr=0.5"), labels, samples) != base
    assert fingerprint(cfg_for("seed=1"), labels, samples) != base
    image = Path(cfg.data.processed_dir) / "dove_a" / "img.png"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)
    assert fingerprint(cfg, labels, samples) != base


def test_load_checkpoint_refuses_other_inputs_and_finished_runs(tmp_path):
    assert load_checkpoint(tmp_path, "abc") is None  # none yet
    (tmp_path / "state.json").write_text(json.dumps({"fingerprint": "abc", "history": [1], "completed": False}))
    assert load_checkpoint(tmp_path, "abc")["history"] == [1]
    assert load_checkpoint(tmp_path, "other") is None
    (tmp_path / "state.json").write_text(json.dumps({"fingerprint": "abc", "history": [1], "completed": True}))
    assert load_checkpoint(tmp_path, "abc") is None
    (tmp_path / "state.json").write_text("{not json")
    assert load_checkpoint(tmp_path, "abc") is None


# --- real training ----------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_tiny_training_run_writes_every_output_and_tracks_it(cfg_for):
    cfg = cfg_for()
    result = run(cfg)
    paths = output_paths(cfg)

    metrics = json.loads(paths["metrics"].read_text())
    assert flat_keys(metrics) == metrics_schema()  # the schema train_paddleseg writes too
    for key in ("num_params", "best_val_mIoU", "epochs", "train_seconds", "train_images_per_second"):
        assert key in metrics and result[key] == metrics[key]
    assert metrics["epochs"] == 2 and metrics["num_params"] == 2_058_690
    assert metrics["iters"] == 4 and metrics["best_iter"] == 2 * metrics["best_epoch"]  # 6 images, batch 4: 2 steps
    assert 0 <= metrics["best_val_mIoU"] <= 1 and metrics["train_images_per_second"] > 0
    assert metrics["best_val_mIoU"] == pytest.approx(np.mean(list(metrics["best_val_IoU"].values())))

    curves = read_csv(paths["plots"])
    assert [row["epoch"] for row in curves] == ["1", "2"] and [row["iter"] for row in curves] == ["2", "4"]
    assert list(curves[0]) == list(PLOT_COLUMNS)
    assert max(float(row["val_mIoU"]) for row in curves) == pytest.approx(metrics["best_val_mIoU"], abs=1e-6)

    # The exported model loads without the training code and scores every pixel.
    model_dir = paths["model_dir"]
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["input_size"] == [32, 32] and meta["class_names"] == ["_background_", "dove"]
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.5] * 3
    loaded = paddle.jit.load(str(model_dir / "inference"))
    loaded.eval()
    assert loaded(paddle.rand([3, 3, 32, 32])).shape == [3, 2, 32, 32]
    assert (model_dir / "best.pdparams").is_file()

    # MLflow: one run with per-epoch curves, the final metrics, the params, the tags and the artifacts.
    run_info = json.loads(paths["run_id_file"].read_text())
    assert run_info["run_id"] == result["run_id"]
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    tracked = client.get_run(run_info["run_id"])
    assert tracked.info.status == "FINISHED"
    for name in ("train/loss", "val/mIoU", "val/acc", "val/kappa", "val/mDice", "val/IoU/dove", "epoch"):
        assert [m.step for m in client.get_metric_history(tracked.info.run_id, name)] == [1, 2]
    assert tracked.data.metrics["best_val_mIoU"] == pytest.approx(metrics["best_val_mIoU"])
    assert tracked.data.params["train_paddle.input_size"] == "32"
    assert tracked.data.params["train_paddle.lr"] == "0.003"
    assert {"stage", "git_commit", "data_version", "dvc_exp_name"} <= set(tracked.data.tags)
    assert tracked.data.tags["stage"] == STAGE
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(tracked.info.run_id, "model")}
    assert {"config", "model/summary.txt", "model/meta.json"} <= artifacts
    logged_models = mlflow.search_logged_models(
        experiment_ids=[tracked.info.experiment_id],
        filter_string=f"source_run_id = '{tracked.info.run_id}'",
        output_format="list",
    )
    assert [m.name for m in logged_models] == ["paddle_model"]
    # registered: a new version of the model named in params, recorded in the run-id file
    assert run_info["registered_model"]["name"] == cfg.mlflow.registered_models.paddle == "doveseg-dovenet"
    version = client.get_model_version("doveseg-dovenet", run_info["registered_model"]["version"])
    assert version.run_id == tracked.info.run_id and version.source == f"models:/{logged_models[0].model_id}"
    assert [d.dataset.name for d in tracked.inputs.dataset_inputs] == [str(cfg.data.processed_dir)]

    # The checkpoint is kept (DVC persist) but marked finished: a rerun trains afresh, in a new run.
    state = json.loads((paths["checkpoint_dir"] / "state.json").read_text())
    assert state["completed"] is True and len(state["history"]) == 2


class StopAfterEpoch(paddle.callbacks.Callback):
    """Interrupts training after the checkpoint of one epoch, as a kill would."""

    def on_eval_end(self, logs=None):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(cfg_for):
    cfg = cfg_for("train_paddle.epochs=3", "train_paddle.to_static=false", "train_paddle.weight_average=0.9")
    paths = output_paths(cfg)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAfterEpoch()])
    state = json.loads((paths["checkpoint_dir"] / "state.json").read_text())
    assert [row["epoch"] for row in state["history"]] == [1] and not state["completed"]
    # The checkpoint holds the raw weights to continue from, and the weight average beside them.
    raw, average = (paddle.load(str(paths["checkpoint_dir"] / f"{name}.pdparams")) for name in ("model", "average"))
    assert state["average_steps"] == 2 and raw.keys() == average.keys()
    assert not np.allclose(raw["output_conv.weight"].numpy(), average["output_conv.weight"].numpy())
    assert not paths["model_dir"].exists() and not paths["metrics"].exists()  # nothing half-done
    optimizer_state = paddle.load(str(paths["checkpoint_dir"] / "optimizer.pdopt"))
    steps_per_epoch = 2  # 6 images, batch 4
    assert optimizer_state["LR_Scheduler"]["last_epoch"] == steps_per_epoch

    result = run(cfg)
    assert result["resumed_from_epoch"] == 1 and result["epochs"] == 3
    assert json.loads((paths["checkpoint_dir"] / "state.json").read_text())["average_steps"] == 6
    assert [row["epoch"] for row in read_csv(paths["plots"])] == ["1", "2", "3"]
    assert result["run_id"] == state["run_id"]  # the same MLflow run, continued
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    assert [m.step for m in client.get_metric_history(state["run_id"], "val/mIoU")] == [1, 2, 3]
    assert client.get_run(state["run_id"]).info.status == "FINISHED"

    # Other params: the old checkpoint is not used.
    result = run(
        cfg_for(
            "train_paddle.epochs=3", "train_paddle.to_static=false", "train_paddle.lr=0.001", "train_paddle.epochs=1"
        )
    )
    assert result["resumed_from_epoch"] == 0 and result["run_id"] != state["run_id"]
