"""The labels file (labelme2voc format): one class list, hence one set of class ids, for every file.

Line 1 is ``__ignore__`` (id 255 in label PNGs), line 2 ``_background_`` (id 0), then one class per
line (ids 1, 2, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.common.config import StageError

IGNORE_NAME = "__ignore__"
BACKGROUND_NAME = "_background_"
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Labels:
    names: tuple[str, ...]  # names[i] is class id i; names[0] is _background_

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def id_of(self, name: str) -> int | None:
        """Class id of a shape label: 255 for __ignore__, None when the label is unknown."""
        if name == IGNORE_NAME:
            return IGNORE_INDEX
        try:
            return self.names.index(name)
        except ValueError:
            return None


def read_labels(path: str | Path) -> Labels:
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: labels file not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if lines[:2] != [IGNORE_NAME, BACKGROUND_NAME]:
        raise StageError(
            f"{path}: the first two lines must be {IGNORE_NAME} and {BACKGROUND_NAME} "
            f"(labelme2voc format), got {lines[:2]}"
        )
    names = lines[1:]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StageError(f"{path}: duplicate class names {duplicates}")
    if len(names) < 2:
        raise StageError(f"{path}: no classes after {BACKGROUND_NAME}")
    if len(names) > IGNORE_INDEX:
        raise StageError(f"{path}: {len(names)} classes; label PNGs hold at most {IGNORE_INDEX}")
    return Labels(tuple(names))
