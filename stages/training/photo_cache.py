"""Training photos decoded and resized once per run, not once per epoch.

Decoding a 12 MP photo and shrinking it to the model's size takes ~0.1-0.3 s; a training step on it at
64-512 px takes a few milliseconds per image. So both trainers keep each photo (and its label) at the one
size their per-epoch transforms start from, in memory, within a budget per process (the trainers'
``cache_mb``). Photos beyond the budget are made again each time they are used, the same way: the budget
changes speed, never results. The cache is filled before training starts, in the main process, so the
DataLoader's worker processes (forked later) share it. Under Paddle's launcher each process holds its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from stages.training import distributed

MB = 1 << 20


class PhotoCache:
    """``make(index)`` -> a tuple of arrays (and small values), memoised up to ``budget_bytes`` in all."""

    def __init__(self, make: Callable[[int], tuple], count: int, budget_bytes: int):
        self.make, self.count, self.budget = make, count, max(0, int(budget_bytes))
        self.items: dict[int, tuple] = {}
        self.bytes = 0
        self.full = False  # an item did not fit: the rest are made on each use

    def get(self, index: int) -> tuple:
        item = self.items.get(index)
        if item is None:
            item = self.make(index)
            self._keep(index, item)
        return item

    def _keep(self, index: int, item: tuple) -> None:
        size = sum(value.nbytes for value in item if isinstance(value, np.ndarray))
        if self.full or self.bytes + size > self.budget:
            self.full = True
            return
        self.items[index] = item
        self.bytes += size

    def fill(self, what: str) -> dict:
        """Make and keep every item (until the budget is spent), with a progress bar; returns what it did."""
        started = time.perf_counter()
        main = distributed.is_main_process()
        for index in tqdm(
            range(self.count), desc=f"caching {what}", unit="photo", disable=not main or not self.count, leave=False
        ):
            if self.full:
                break
            self.get(index)
        stats = {
            "photos": len(self.items),
            "of": self.count,
            "megabytes": round(self.bytes / MB, 1),
            "seconds": round(time.perf_counter() - started, 2),
        }
        if main and self.count:
            note = (
                ""
                if len(self.items) == self.count
                else f"; the cache budget ({self.budget / MB:.0f} MB) is spent, the others are decoded on each use"
            )
            print(
                f"cached {len(self.items)} of {self.count} {what} ({stats['megabytes']} MB) "
                f"in {stats['seconds']} s{note}"
            )
        return stats
