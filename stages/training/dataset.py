"""A paddle.io.Dataset over build_splits' lists, with the train-time augmentation and eval-time resizing.

Every transform takes and returns an (image, label) pair of HxWx3 uint8 and HxW uint8 arrays, so image and
label stay aligned; labels are only ever resized with nearest-neighbour, so no new class ids appear.
Augmentation draws from a generator seeded by (seed, epoch, index): the same run gives the same batches
whatever the number of DataLoader workers, and a resumed run replays the epochs it did not finish.
Each photo is decoded and resized once per run (stages.training.photo_cache), not once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import paddle
from PIL import Image

from stages.data.images import read_label_png, read_rgb
from stages.training.distributed import RankBatches, world_size
from stages.training.photo_cache import MB, PhotoCache

CACHE_MB = 1024  # default memory budget of one dataset's photo cache, per process


@dataclass(frozen=True)
class Augment:
    crop_size: int | None = None  # square training crop side; None: the input size
    scale_range: tuple[float, float] = (0.75, 1.25)  # random resize, as a factor of the input size
    flip_prob: float = 0.5  # horizontal flip
    color_jitter: float = 0.3  # brightness/contrast/saturation factors in 1 +- this


def resize_pair(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to size x size: the image bilinear, the label nearest-neighbour."""
    image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((size, size), Image.NEAREST))
    return image, label


def hflip(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return image[:, ::-1], label[:, ::-1]


def random_crop(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random size x size window of an image at least that large."""
    height, width = label.shape
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    return image[window], label[window]


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and saturation, each a factor in [1 - strength, 1 + strength]."""
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    pixels = image.astype(np.float32) * brightness
    pixels = (pixels - pixels.mean()) * contrast + pixels.mean()
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = (pixels - grey) * saturation + grey
    return np.clip(pixels, 0, 255).astype(np.uint8)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32, (pixel / 255 - mean) / std per channel."""
    pixels = image.astype(np.float32) / 255.0
    pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class SegDataset(paddle.io.Dataset):
    """Samples (image CHW float32, label 1xHxW int64).

    ``samples`` are stages.data.split_lists.Sample-like objects with ``image`` and ``label`` paths.
    Without ``augment``: the whole image resized to input_size x input_size (validation, and what predict
    does). With it (training): the whole image resized to input_size x a random scale, a random
    crop_size x crop_size window of that, flipped and colour-jittered. Objects thus keep about the size
    they have at validation, and small crops make training steps cheap.

    Every epoch starts from the photo and label resized once to ``base_size`` square (``base_pair``,
    cached within ``cache_bytes``): input_size for validation, exactly as predict resizes the whole photo;
    for training the largest side the random scale asks for, from a JPEG decoded at a reduced scale.
    """

    def __init__(
        self,
        samples: Sequence,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: Augment | None = None,
        seed: int = 0,
        cache_bytes: int = CACHE_MB * MB,
    ):
        super().__init__()
        self.samples = list(samples)
        self.input_size = input_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.base_size = input_size
        if augment is not None:
            self.base_size = max(augment.crop_size or input_size, round(input_size * max(augment.scale_range)))
        self.cache = PhotoCache(self.base_pair, len(self.samples), cache_bytes)

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch; DataLoader workers start after it, so they see the new epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def base_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The photo and label at base_size x base_size: what every epoch starts from (do not modify)."""
        sample = self.samples[index]
        # validation decodes the whole photo, as predict does; training may start from a reduced decode
        at_least = (self.base_size, self.base_size) if self.augment is not None else None
        return resize_pair(read_rgb(sample.image, at_least), read_label_png(sample.label), self.base_size)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.cache.get(index)

    def fill_cache(self, what: str = "photos") -> dict:
        """Decode and resize every photo now (within the budget), before training and its worker processes."""
        return self.cache.fill(f"{what} at {self.base_size} px")

    def transform(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 pair after augmentation (when rng and self.augment are given) and resizing."""
        if self.augment is not None and rng is not None:
            crop = self.augment.crop_size or self.input_size
            side = max(crop, round(self.input_size * rng.uniform(*self.augment.scale_range)))
            image, label = random_crop(*resize_pair(image, label, side), rng, crop)
            if rng.random() < self.augment.flip_prob:
                image, label = hflip(image, label)
            image, label = np.ascontiguousarray(image), np.ascontiguousarray(label)
            if self.augment.color_jitter > 0:
                image = color_jitter(image, rng, self.augment.color_jitter)
            return image, label
        return resize_pair(image, label, self.input_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.load_pair(index)
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.augment else None
        image, label = self.transform(image, label, rng)
        return normalize(image, self.mean, self.std), label[None].astype(np.int64)


class EpochSampler(paddle.io.Sampler):
    """Indices for one epoch: all of them (shuffled or not), or a random subset of ``max_samples``.

    The order depends only on (seed, epoch), so a resumed run sees the same order as an uninterrupted one.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, max_samples: int | None = None):
        super().__init__()
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.num_samples = min(size, max_samples) if max_samples else size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.size)
        return iter(order[: self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


def make_loader(
    dataset: SegDataset, batch_size: int, train: bool, num_workers: int, seed: int = 0, max_samples: int | None = None
) -> paddle.io.DataLoader:
    """A DataLoader over ``dataset``; for training shuffled per epoch (and capped to ``max_samples``).

    ``batch_size`` is the global batch: under Paddle's launcher each process loads its share of it
    (stages.training.distributed.RankBatches). Evaluation batches are rounded up to a multiple of the processes, so
    only the last one is padded: the one paddle.Model trims after gathering the predictions.
    """
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, max_samples=max_samples if train else None)
    if not train:
        batch_size = -(-batch_size // world_size()) * world_size()
    batches = RankBatches(paddle.io.BatchSampler(sampler=sampler, batch_size=batch_size))
    return paddle.io.DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, use_shared_memory=num_workers > 0, return_list=True
    )
