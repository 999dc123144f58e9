"""Files that hold a secret: readable by their owner only (0600) from their first byte, never chmod-ed after."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, content: str | bytes, owner: tuple[int, int] | None = None) -> None:
    """Write ``content`` to ``path`` through a new 0600 file that then takes its place (atomically), so neither
    a reader nor an older, looser file ever sees it. ``owner`` (uid, gid): hand the file to that user first
    (root starting PostgreSQL as the postgres user)."""
    data = content.encode() if isinstance(content, str) else content
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def private_folder(path: Path) -> Path:
    """A folder only its owner enters (made 0700, or already there)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
