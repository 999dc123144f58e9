"""The scoring convention of stages.evaluation.metrics: headline means over the classes present in the label
or the prediction, PaddleSeg's all-classes means under their own names, None for undefined per-class ratios."""

import numpy as np
import pytest

from stages.evaluation.metrics import HEADLINE_KEYS, PER_CLASS_KEYS, ConfusionMatrix


def scored(pred, label, num_classes):
    matrix = ConfusionMatrix(num_classes)
    matrix.update(np.asarray(pred), np.asarray(label))
    return matrix.scores()


def test_miou_averages_over_classes_in_label_or_prediction_only():
    # 6 classes in the labels file; the photo holds 0 and 1, the model also predicts 2 somewhere
    label = [0, 0, 0, 0, 1, 1, 1, 1]
    pred = [0, 0, 0, 2, 1, 1, 1, 0]
    scores = scored(pred, label, 6)
    iou = {0: 3 / 5, 1: 3 / 4, 2: 0.0}
    assert scores["IoU"][:3] == pytest.approx([iou[0], iou[1], iou[2]])
    assert scores["IoU"][3:] == [None, None, None]
    assert scores["mIoU"] == pytest.approx(np.mean(list(iou.values())))
    assert scores["mIoU_all_classes"] == pytest.approx(sum(iou.values()) / 6)
    dice = {0: 6 / 8, 1: 6 / 7, 2: 0.0}
    assert scores["dice"][:3] == pytest.approx(list(dice.values()))
    assert scores["mDice"] == pytest.approx(np.mean(list(dice.values())))
    assert scores["mDice_all_classes"] == pytest.approx(sum(dice.values()) / 6)


def test_undefined_precision_and_recall_are_none_not_zero():
    label = [0, 0, 1, 1]
    pred = [0, 0, 0, 2]  # class 1 never predicted, class 2 never in the label
    scores = scored(pred, label, 4)
    assert scores["precision"] == [pytest.approx(2 / 3), None, 0.0, None]
    assert scores["recall"] == [1.0, 0.0, None, None]
    assert scores["IoU"][1] == 0.0 and scores["IoU"][3] is None


def test_more_classes_in_the_labels_file_leave_the_headline_unchanged():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, size=500)
    pred = np.where(rng.random(500) < 0.7, label, rng.integers(0, 3, size=500))
    few, many = scored(pred, label, 3), scored(pred, label, 21)
    assert many["mIoU"] == pytest.approx(few["mIoU"]) and many["mDice"] == pytest.approx(few["mDice"])
    assert many["mIoU_all_classes"] == pytest.approx(few["mIoU_all_classes"] * 3 / 21)
    assert many["acc"] == few["acc"] and many["kappa"] == pytest.approx(few["kappa"])


def test_ignored_pixels_count_nowhere_and_keys_are_complete():
    scores = scored([1, 0, 1], [1, 255, 1], 2)
    assert scores["mIoU"] == 1.0 and scores["IoU"] == [None, 1.0] and scores["pixels"] == 2
    assert set(HEADLINE_KEYS) | set(PER_CLASS_KEYS) <= set(scores)


def test_no_scored_pixel_gives_zero_means_and_no_per_class_values():
    scores = scored([0, 1], [255, 255], 2)
    assert scores["mIoU"] == scores["mIoU_all_classes"] == scores["acc"] == 0.0
    assert all(value is None for key in PER_CLASS_KEYS for value in scores[key])
