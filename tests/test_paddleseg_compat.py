"""The PaddleSeg 2.8.0 / Paddle 3 fixes: each original still fails (else its fix must go), each patch works;
and the shared ConfusionMatrix gives PaddleSeg's own numbers."""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from stages.evaluation.metrics import ConfusionMatrix
from stages.training import paddleseg_compat

paddleseg_compat.apply()
from paddleseg.models.losses import CrossEntropyLoss, DiceLoss, MixedLoss  # noqa: E402
from paddleseg.utils import metrics as paddleseg_metrics  # noqa: E402

ORIGINALS = paddleseg_compat.ORIGINALS


def logits_and_label(seed=0, classes=3, shape=(2, 5, 6), ignore_share=0.2):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(shape[0], classes, *shape[1:])).astype("float32")
    label = rng.integers(0, classes, size=shape)
    label[rng.random(shape) < ignore_share] = 255
    return logits, label


def reference_loss(logits, label, weight=None, top_k=1.0, avg_non_ignore=True):
    """PaddleSeg's CrossEntropyLoss, from its documentation, in NumPy."""
    classes = logits.shape[1]
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    valid = label != 255
    safe = np.where(valid, label, 0)
    nll = -np.take_along_axis(log_p, safe[:, None], axis=1)[:, 0]
    class_weight = np.ones(classes) if weight is None else np.asarray(weight, np.float64)
    pixel_weight = class_weight[safe]
    loss = np.where(valid, nll * pixel_weight, 0.0)
    mask = valid if avg_non_ignore else np.ones_like(valid)
    if top_k == 1.0:
        return loss.mean() / (np.mean(mask * pixel_weight) + 1e-8)
    flat = loss.reshape(-1)
    k = int(top_k * flat.size)
    top = np.argsort(-flat, kind="stable")[:k]
    return flat[top].mean() / (pixel_weight.reshape(-1)[top].mean() + 1e-8)


# --- fix 1: CrossEntropyLoss dtype promotion ------------------------------------------------------


def test_original_cross_entropy_still_fails_on_this_paddle():
    """If this fails, Paddle promotes int64 * float32 again: remove fix 1 from stages/training/paddleseg_compat.py."""
    logits, label = logits_and_label()
    loss_layer = CrossEntropyLoss()
    logit = paddle.to_tensor(logits).transpose([0, 2, 3, 1])
    label_t = paddle.to_tensor(label, dtype="int64")
    per_pixel = F.cross_entropy(logit, label_t, ignore_index=255, reduction="none")
    with pytest.raises(TypeError, match="Type promotion"):
        ORIGINALS["cross_entropy_post_process"](loss_layer, logit, label_t, None, per_pixel)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"weight": [0.2, 1.0, 3.0]},
        {"top_k_percent_pixels": 0.3},
        {"weight": [0.5, 2.0, 1.0], "top_k_percent_pixels": 0.5},
        {"avg_non_ignore": False},
    ],
)
def test_patched_cross_entropy_matches_its_definition(kwargs):
    logits, label = logits_and_label(seed=len(kwargs))
    loss = CrossEntropyLoss(**kwargs)(paddle.to_tensor(logits), paddle.to_tensor(label, dtype="int64"))
    expected = reference_loss(
        logits, label, kwargs.get("weight"), kwargs.get("top_k_percent_pixels", 1.0), kwargs.get("avg_non_ignore", True)
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_patched_cross_entropy_trains():
    logits, label = logits_and_label()
    logit = paddle.to_tensor(logits, stop_gradient=False)
    CrossEntropyLoss()(logit, paddle.to_tensor(label, dtype="int64")).backward()
    assert logit.grad is not None and float(logit.grad.abs().sum()) > 0
    assert float(logit.grad[(paddle.to_tensor(label) == 255).unsqueeze(1).expand_as(logit)].abs().sum()) == 0


# --- fix 2: core.train logs loss.numpy()[0] --------------------------------------------------------


def test_original_loss_computation_still_gives_0d_losses():
    """If this fails, losses are 1-element again and core.train's l[0] works: remove fix 2."""
    logits, label = logits_and_label()
    losses = {"types": [CrossEntropyLoss()], "coef": [1]}
    out = ORIGINALS["train_loss_computation"](
        [paddle.to_tensor(logits)], paddle.to_tensor(label, "int64"), None, losses
    )
    with pytest.raises(IndexError):
        out[0].numpy()[0]  # what core.train does when it logs


def test_patched_loss_computation_gives_one_element_losses_of_the_same_value():
    logits, label = logits_and_label()
    losses = {"types": [CrossEntropyLoss(), CrossEntropyLoss(weight=[1.0, 2.0, 3.0])], "coef": [1, 0.5]}
    inputs = ([paddle.to_tensor(logits)] * 2, paddle.to_tensor(label, "int64"), None, losses)
    original = ORIGINALS["train_loss_computation"](*inputs)
    patched = paddleseg_compat.train_loss_computation(*inputs)
    assert [p.shape for p in patched] == [[1], [1]]
    assert [float(p.numpy()[0]) for p in patched] == pytest.approx([float(o) for o in original])


# --- fix 3: calculate_area's paddle.concat of 0-d sums --------------------------------------------


def test_original_calculate_area_still_fails_on_this_paddle():
    """If this fails, paddle.concat accepts 0-d tensors again: remove fix 3."""
    _, label = logits_and_label()
    pred = paddle.to_tensor(np.zeros_like(label), "int64")
    with pytest.raises(ValueError):
        ORIGINALS["calculate_area"](pred, paddle.to_tensor(label, "int64"), 3, ignore_index=255)


@pytest.mark.parametrize("seed", range(4))
def test_patched_calculate_area_counts_pixels(seed):
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 6))
    label = rng.integers(0, classes, size=(2, 1, 7, 9))
    label[rng.random(label.shape) < 0.25] = 255
    pred = rng.integers(0, classes, size=(2, 1, 7, 9))
    intersect, pred_area, label_area = paddleseg_metrics.calculate_area(
        paddle.to_tensor(pred, "int32"), paddle.to_tensor(label, "int64"), classes, ignore_index=255
    )
    valid = label != 255
    for c in range(classes):
        assert int(pred_area[c]) == np.sum((pred == c) & valid)
        assert int(label_area[c]) == np.sum(label == c)
        assert int(intersect[c]) == np.sum((pred == c) & (label == c) & valid)
    assert intersect.dtype == paddle.int64 and intersect.shape == [classes]


# --- fix 4: DiceLoss edits autograd's tensors in place -------------------------------------------------


def reference_dice(logits, label, weight=None, smooth=1.0):
    """PaddleSeg's soft Dice loss, from its documentation, in NumPy."""
    classes = logits.shape[1]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    valid = (label != 255)[:, None]
    target = (np.where(label == 255, 0, label)[:, None] == np.arange(classes)[None, :, None, None]) * valid
    probs = probs * valid
    overlap = (probs * target).sum(axis=(2, 3))
    total = (probs + target).sum(axis=(2, 3))
    per_class = (1 - (2 * overlap + smooth) / (total + smooth + 1e-8)).mean(axis=0)
    return (per_class * (np.ones(classes) if weight is None else np.asarray(weight))).sum() / classes


def test_original_dice_loss_still_fails_on_this_paddle():
    """If this fails, Paddle allows the in-place edit again: remove fix 4 from stages/training/paddleseg_compat.py."""
    logits, label = logits_and_label()
    logit, label_t = paddle.to_tensor(logits, stop_gradient=False), paddle.to_tensor(label, "int64")
    cross_entropy = CrossEntropyLoss()(logit, label_t)  # keeps label_t for its backward
    dice = ORIGINALS["dice_loss_forward"](DiceLoss(), logit, label_t)
    with pytest.raises(RuntimeError, match="inplace"):
        (cross_entropy + dice).backward()


@pytest.mark.parametrize("weight", [None, [0.5, 1.0, 2.0]])
def test_patched_dice_loss_matches_its_definition_and_trains(weight):
    logits, label = logits_and_label(seed=3)
    logit, label_t = paddle.to_tensor(logits, stop_gradient=False), paddle.to_tensor(label, "int64")
    loss = DiceLoss(weight=weight)(logit, label_t)
    assert float(loss) == pytest.approx(reference_dice(logits, label, weight), rel=1e-5)
    loss.backward()
    assert float(logit.grad.abs().sum()) > 0
    assert (label_t.numpy() == label).all()  # the caller's labels are left alone


def test_mixed_cross_entropy_and_dice_trains():
    logits, label = logits_and_label(seed=4)
    logit = paddle.to_tensor(logits, stop_gradient=False)
    mixed = MixedLoss([CrossEntropyLoss(), DiceLoss()], [1.0, 1.0])
    ce_loss, dice_loss = mixed(logit, paddle.to_tensor(label, "int64"))
    (ce_loss + dice_loss).backward()
    assert float(logit.grad.abs().sum()) > 0
    assert float(ce_loss) == pytest.approx(reference_loss(logits, label), rel=1e-5)
    assert float(dice_loss) == pytest.approx(reference_dice(logits, label), rel=1e-5)


def test_apply_is_idempotent():
    paddleseg_compat.apply()
    paddleseg_compat.apply()
    assert CrossEntropyLoss._post_process_loss is paddleseg_compat.cross_entropy_post_process
    assert paddleseg_metrics.calculate_area is paddleseg_compat.calculate_area
    assert DiceLoss.forward is paddleseg_compat.dice_loss_forward


# --- the shared metric module gives PaddleSeg's numbers ---------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_confusion_matrix_equals_paddleseg_metrics(seed):
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 6))
    matrix = ConfusionMatrix(classes)
    totals = [paddle.zeros([classes], "int64") for _ in range(3)]
    for _ in range(3):  # several images, accumulated as PaddleSeg's evaluate does
        label = rng.integers(0, classes, size=(1, 1, 11, 13))
        label[rng.random(label.shape) < 0.2] = 255
        # biased towards the label, so scores are neither 0 nor 1; the last class is never predicted
        pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, classes, size=label.shape))
        pred = np.where((pred == 255) | (pred == classes - 1), 0, pred)
        matrix.update(pred, label)
        areas = paddleseg_metrics.calculate_area(
            paddle.to_tensor(pred, "int32"), paddle.to_tensor(label, "int64"), classes, ignore_index=255
        )
        totals = [total + area for total, area in zip(totals, areas)]
    ours = matrix.scores()
    class_iou, miou = paddleseg_metrics.mean_iou(*totals)
    acc, precision, recall = paddleseg_metrics.class_measurement(*totals)
    kappa = paddleseg_metrics.kappa(*totals)
    class_dice, mdice = paddleseg_metrics.dice(*totals)
    # PaddleSeg's means are the *_all_classes ones; its per-class 0 for 0/0 is None here
    assert ours["mIoU_all_classes"] == pytest.approx(miou, abs=1e-12)
    assert ours["mDice_all_classes"] == pytest.approx(mdice, abs=1e-12)
    assert ours["acc"] == pytest.approx(acc, abs=1e-12)
    assert ours["kappa"] == pytest.approx(kappa, abs=1e-12)
    for key, theirs in (("IoU", class_iou), ("dice", class_dice), ("precision", precision), ("recall", recall)):
        assert [0.0 if v is None else v for v in ours[key]] == pytest.approx(list(theirs), abs=1e-12), key
    assert ours["precision"][classes - 1] is None  # never predicted
    # the headline means leave out the classes absent from both label and prediction (none here)
    assert ours["mIoU"] == pytest.approx(np.mean([v for v in ours["IoU"] if v is not None]), abs=1e-12)


# --- PaddleSeg's own train, evaluate and predict run with the fixes -------------------------------


@pytest.mark.slow
def test_paddleseg_core_train_evaluate_and_predict_run(tmp_path):
    import paddleseg.transforms as T
    from paddleseg.core import evaluate, predict, train
    from paddleseg.cvlibs import Config, SegBuilder

    from tiny_pipeline import make_dataset

    make_dataset(tmp_path / "data")
    config_file = tmp_path / "unet.yml"
    root, splits = tmp_path / "data" / "processed", tmp_path / "data" / "splits"
    transforms = "[{type: Resize, target_size: [32, 32]}, {type: Normalize}]"
    config_file.write_text(f"""
batch_size: 2
iters: 2
train_dataset: {{type: Dataset, dataset_root: {root}, train_path: {splits}/train.txt, num_classes: 2,
                mode: train, transforms: {transforms}}}
val_dataset: {{type: Dataset, dataset_root: {root}, val_path: {splits}/val.txt, num_classes: 2,
              mode: val, transforms: {transforms}}}
optimizer: {{type: Momentum, weight_decay: 0.00004}}
lr_scheduler: {{type: PolynomialDecay, learning_rate: 0.01, end_lr: 0.0, power: 0.9}}
loss: {{types: [{{type: CrossEntropyLoss}}], coef: [1]}}
model: {{type: UNet, num_classes: 2}}
""")
    builder = SegBuilder(Config(str(config_file)))
    out = tmp_path / "out"
    train(
        builder.model,
        builder.train_dataset,
        val_dataset=builder.val_dataset,
        optimizer=builder.optimizer,
        save_dir=str(out),
        iters=2,
        batch_size=2,
        save_interval=2,
        log_iters=1,
        losses=builder.loss,
    )
    assert (out / "iter_2" / "model.pdparams").is_file() and (out / "best_model" / "model.pdparams").is_file()

    miou, _acc, class_iou, _, _kappa = evaluate(builder.model, builder.val_dataset, print_detail=False)
    assert 0.0 <= miou <= 1.0 and len(class_iou) == 2

    image = str(root / "dove_a" / "img.png")
    predict(
        builder.model,
        str(out / "best_model" / "model.pdparams"),
        T.Compose([T.Resize(target_size=(32, 32)), T.Normalize()]),
        [image],
        save_dir=str(tmp_path / "pred"),
    )
    assert (tmp_path / "pred" / "pseudo_color_prediction" / "img.png").is_file()
