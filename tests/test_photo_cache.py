"""Training photos are decoded and resized once per run (stages/training/photo_cache.py), for both trainers,
and the cache changes speed, never the samples."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import stages.training.dataset as dovenet_data
from stages.data.images import save_label_png
from stages.data.split_lists import read_split
from stages.training import paddleseg_data, paddleseg_loop
from stages.training.dataset import Augment, SegDataset
from stages.training.photo_cache import PhotoCache

from tiny_pipeline import make_cfg, make_dataset


@pytest.fixture
def samples(tmp_path):
    cfg = make_cfg(*make_dataset(tmp_path / "data"))
    return read_split(cfg, "train")


def counting(monkeypatch, module):
    """Count the photos ``module`` decodes."""
    calls = []
    original = module.read_rgb

    def read_rgb(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(module, "read_rgb", read_rgb)
    return calls


def test_photo_cache_keeps_items_within_its_budget():
    made = []
    cache = PhotoCache(lambda i: (made.append(i) or np.zeros(100, np.uint8), i), 5, budget_bytes=250)
    stats = cache.fill("things")
    assert stats["photos"] == 2 and cache.bytes == 200 and cache.full
    for index in range(5):
        assert cache.get(index)[1] == index
    assert made == [0, 1, 2, 2, 3, 4]  # the first two are kept; the rest are made on each use


def test_dovenet_dataset_decodes_each_photo_once(samples, monkeypatch):
    calls = counting(monkeypatch, dovenet_data)
    augment = Augment(crop_size=16, scale_range=(0.75, 1.25))
    train = SegDataset(samples, 32, (0.5,) * 3, (0.5,) * 3, augment, seed=3)
    val = SegDataset(samples, 32, (0.5,) * 3, (0.5,) * 3)
    train.fill_cache()
    val.fill_cache()
    assert len(calls) == 2 * len(samples) and train.base_size == 40 and val.base_size == 32
    for epoch in range(3):
        train.set_epoch(epoch)
        for index in range(len(samples)):
            train[index], val[index]
    assert len(calls) == 2 * len(samples)


def test_dovenet_samples_do_not_depend_on_the_cache_budget(samples):
    augment = Augment(crop_size=16, scale_range=(0.5, 1.5))
    roomy = SegDataset(samples, 32, (0.5,) * 3, (0.5,) * 3, augment, seed=3)
    none = SegDataset(samples, 32, (0.5,) * 3, (0.5,) * 3, augment, seed=3, cache_bytes=0)
    roomy.fill_cache()
    for epoch in (0, 1):
        roomy.set_epoch(epoch)
        none.set_epoch(epoch)
        for index in range(len(samples)):
            for a, b in zip(roomy[index], none[index]):
                np.testing.assert_array_equal(a, b)
    # validation resizes the whole photo to the input size, as predict does
    image, _ = SegDataset(samples, 32, (0, 0, 0), (1, 1, 1)).load_pair(1)
    with Image.open(samples[1].image) as photo:
        np.testing.assert_array_equal(image, np.asarray(photo.convert("RGB").resize((32, 32), Image.BILINEAR)))


def paddleseg_datasets(tmp_path, root):
    """PaddleSeg's own train and val datasets over tiny_pipeline's lists, as the UNet template builds them."""
    import paddleseg.transforms as T
    from paddleseg.datasets import Dataset

    processed, splits = root / "processed", root / "splits"
    train = Dataset(
        mode="train",
        dataset_root=str(processed),
        train_path=str(splits / "train.txt"),
        num_classes=2,
        transforms=[
            T.Resize(target_size=(24, 24)),
            T.ResizeStepScaling(0.75, 1.25, 0.25),
            T.RandomPaddingCrop(crop_size=(16, 16)),
            T.RandomHorizontalFlip(),
            T.Normalize(),
        ],
    )
    val = Dataset(
        mode="val",
        dataset_root=str(processed),
        val_path=str(splits / "val.txt"),
        num_classes=2,
        transforms=[T.Resize(target_size=(24, 24)), T.Normalize()],
    )
    return train, val


def test_paddleseg_items_match_paddleseg_and_photos_are_decoded_once(tmp_path, monkeypatch):
    """The same items as PaddleSeg's, but for the resized photo kept in bytes, and JPEGs that are decoded at a
    reduced scale when the Resize shrinks them anyway (tiny_pipeline's dove_c: 48x64 decoded at 24x32)."""
    import random

    from stages.data.images import read_rgb

    root = tmp_path / "data"
    make_dataset(root)
    train, val = paddleseg_datasets(tmp_path, root)
    for dataset in (train, val):  # what PaddleSeg reads, a reduced decode where we make one
        dataset.file_list = [
            [read_rgb(image, (24, 24)).astype(np.float32)[..., ::-1].copy(), label]
            if image.endswith("dove_c/img.jpg")
            else [image, label]
            for image, label in dataset.file_list
        ]
    reference = {id(dataset): dataset.file_list for dataset in (train, val)}
    calls = counting(monkeypatch, paddleseg_data)
    cached_train, cached_val = paddleseg_data.cached(train, 1 << 20), paddleseg_data.cached(val, 1 << 20)
    assert len(cached_train.fixed_ops) == 1 and len(cached_train.random_ops) == 4
    for dataset in (train, val):  # our reading: the files, as the lists name them
        dataset.file_list = [
            [str(root / "processed" / "dove_c" / "img.jpg") if not isinstance(image, str) else image, label]
            for image, label in dataset.file_list
        ]
    cached_train.fill_cache("training photos")
    cached_val.fill_cache("validation photos")
    for dataset in (train, val):
        dataset.file_list = reference[id(dataset)]
    for index in range(len(val)):
        mine, theirs = cached_val[index], val[index]
        np.testing.assert_array_equal(mine["label"], theirs["label"])  # full size, as PaddleSeg scores
        assert mine["trans_info"][0] == ("resize", theirs["label"].shape[1:])
        np.testing.assert_allclose(mine["img"], theirs["img"], atol=1.01 / 127.5)  # the resized photo, in bytes
    for index in range(len(train)):
        for _ in range(3):  # the same random draws give the same crops, flips and labels
            random.seed(index)
            np.random.seed(index)
            mine = cached_train[index]
            random.seed(index)
            np.random.seed(index)
            theirs = train[index]
            np.testing.assert_array_equal(mine["label"], theirs["label"])
            np.testing.assert_allclose(mine["img"], theirs["img"], atol=1.01 / 127.5)
    assert len(calls) == len(train) + len(val) and cached_train.num_classes == 2


def test_paddleseg_validation_scores_large_photos_at_1024_px(tmp_path):
    """A 12 MP label would make PaddleSeg resize C x 12 M class scores; it is scored at 1024 px instead."""
    import paddle

    root = tmp_path / "data"
    make_dataset(root, {"small": (30, 40)})
    rng = np.random.default_rng(0)
    (root / "processed" / "big").mkdir()
    Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(root / "processed" / "big" / "img.jpg")
    label = np.zeros((1500, 2000), np.uint8)
    label[300:900, 500:1700] = 1
    save_label_png(root / "processed" / "big" / "label.png", label)
    (root / "splits" / "val.txt").write_text("big/img.jpg big/label.png\nsmall/img.png small/label.png\n")
    _, val = paddleseg_datasets(tmp_path, root)
    cached_val = paddleseg_data.cached(val, 1 << 20)
    big, small = cached_val[0], cached_val[1]
    assert big["img"].shape == (3, 24, 24) and big["label"].shape == (1, 768, 1024)
    assert big["trans_info"] == [("resize", (768, 1024))]
    assert (big["label"][0] == np.asarray(Image.fromarray(label).resize((1024, 768), Image.NEAREST))).all()
    assert small["label"].shape == (1, 30, 40) and small["trans_info"] == [("resize", (30, 40))]

    model = paddle.nn.Conv2D(3, 2, 1)
    model.forward = lambda x, conv=model.forward: [conv(x)]  # PaddleSeg models return a list of logits
    scores = paddleseg_loop.evaluate(model, cached_val, num_classes=2)
    assert 0 <= scores["mIoU"] <= 1
