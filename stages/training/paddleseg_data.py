"""PaddleSeg's datasets as train_paddleseg reads them: each photo read and resized once per run
(``CachedDataset``, stages.training.photo_cache), the batches of every iteration in a resumable order
(``IterationBatches``) and their collation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import paddle
from PIL import Image

from stages.data.images import read_label_png, read_rgb
from stages.training import paddleseg_compat
from stages.training.photo_cache import PhotoCache

paddleseg_compat.apply()
import paddleseg.transforms as paddleseg_transforms  # noqa: E402  (after the compatibility fixes)
import paddleseg.transforms.functional as paddleseg_functional  # noqa: E402

CACHE_MB = 1024  # default memory budget of a dataset's photo cache, per process
VAL_MAX_SIDE = 1024  # validation scores at each label's size, scaled down to at most this long side


def cached(dataset, cache_bytes: int):
    """``dataset`` as a CachedDataset when it is a PaddleSeg Dataset of RGB photos; anything else as it is."""
    if (
        isinstance(dataset, CachedDataset)
        or not hasattr(dataset, "file_list")
        or getattr(dataset, "img_channels", 3) != 3
        or not hasattr(dataset, "transforms")
    ):
        return dataset
    return CachedDataset(dataset, cache_bytes)


def is_fixed_resize(op) -> bool:
    return isinstance(op, paddleseg_transforms.Resize) and op.interp != "RANDOM"


class CachedDataset(paddle.io.Dataset):
    """A PaddleSeg Dataset whose leading Resize transforms run once per photo (stages.training.photo_cache);
    the transforms after them (random scaling, crops, flips, colour, Normalize) run on every use, as in
    PaddleSeg. Items are PaddleSeg's: ``img`` CHW float32, ``label``, ``trans_info``.

    Reading is ours: the photo as seen (RGB, EXIF applied, as PaddleSeg's cv2.imread gives it), a JPEG
    decoded at a reduced scale when a Resize is about to shrink it anyway; the resized photo is kept as
    bytes (rounded: PaddleSeg's RandomDistort truncates to bytes anyway). Validation labels stay at the
    photo's size, as PaddleSeg scores them, but at most VAL_MAX_SIDE on the long side: a 12 MP label is
    scaled down (nearest) to that, and the class scores are resized back to it instead of to 12 MP
    (C x 12 M floats, 1 GB with 21 classes, and seconds per photo). Small photos are scored as before.
    """

    def __init__(self, dataset, cache_bytes: int):
        super().__init__()
        self.dataset = dataset
        ops = list(dataset.transforms.transforms)
        fixed = 0
        while fixed < len(ops) and is_fixed_resize(ops[fixed]):
            fixed += 1
        self.fixed_ops, self.random_ops = ops[:fixed], ops[fixed:]
        self.validation = dataset.mode != "train"
        self.cache = PhotoCache(self.base_item, len(dataset), cache_bytes)

    def __getattr__(self, name):  # num_classes, ignore_index, file_list, mode... of the PaddleSeg dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def base_item(self, index: int) -> tuple:
        """(image HxWx3 uint8 after the leading Resizes, label, trans_info) of one photo."""
        image_path, label_path = self.dataset.file_list[index]
        at_least = tuple(self.fixed_ops[0].target_size) if self.fixed_ops else None
        label = read_label_png(label_path)
        data = {
            "img": read_rgb(image_path, at_least).astype(np.float32),
            "label": label,
            "trans_info": [],
            "gt_fields": [] if self.validation else ["label"],
        }
        for op in self.fixed_ops:
            data = op(data)
        image = np.clip(np.rint(data["img"]), 0, 255).astype(np.uint8)
        trans_info = list(data["trans_info"])
        if self.validation and self.fixed_ops:
            if max(label.shape) > VAL_MAX_SIDE:
                scale = VAL_MAX_SIDE / max(label.shape)
                size = (max(1, round(label.shape[1] * scale)), max(1, round(label.shape[0] * scale)))
                label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
            # scores go back to the label's size (the photo was maybe decoded smaller than it)
            trans_info[0] = (trans_info[0][0], tuple(label.shape))
        else:
            label = data["label"]
        return image, np.ascontiguousarray(label), tuple(trans_info)

    def fill_cache(self, what: str) -> dict:
        size = "x".join(str(side) for side in self.fixed_ops[-1].target_size) if self.fixed_ops else "full size"
        return self.cache.fill(f"{what} at {size}")

    def __getitem__(self, index: int) -> dict:
        image, label, trans_info = self.cache.get(index)
        data = {
            "img": image.astype(np.float32),
            "label": label.copy(),
            "trans_info": list(trans_info),
            "gt_fields": [] if self.validation else ["label"],
        }
        for op in self.random_ops:
            data = op(data)
        if data["img"].ndim == 2:
            data["img"] = data["img"][..., np.newaxis]
        data["img"] = np.transpose(data["img"], (2, 0, 1))
        if self.validation:
            data["label"] = data["label"][np.newaxis, :, :]
        elif self.dataset.edge:
            data["edge"] = paddleseg_functional.mask_to_binary_edge(
                data["label"], radius=2, num_classes=self.dataset.num_classes
            )
        return data


class IterationBatches(paddle.io.BatchSampler):
    """Sample indices for iterations ``start + 1 .. iters``: a fresh shuffle per epoch, seeded by
    (seed, epoch), full batches only (as PaddleSeg's drop_last). A resumed run sees the same batches as
    an uninterrupted one."""

    def __init__(self, num_samples: int, batch_size: int, iters: int, start: int = 0, seed: int = 0):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.iters, self.start, self.seed = iters, start, seed
        self.per_epoch = num_samples // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for iteration in range(self.start, self.iters):
            epoch, position = divmod(iteration, self.per_epoch)
            order = np.random.default_rng((self.seed, epoch)).permutation(self.num_samples)
            yield order[position * self.batch_size : (position + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, self.iters - self.start)


def collate(items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of PaddleSeg samples as two batches (its other keys are not needed to train)."""
    images = np.stack([item["img"] for item in items]).astype("float32")
    labels = np.stack([item["label"] for item in items]).astype("int64")
    return images, labels
