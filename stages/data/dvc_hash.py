"""The hash DVC gives a file or folder (its ``md5`` in dvc.lock and .dvc files), computed without DVC.

A folder's hash is the md5 of its manifest (every file's md5 and path, as DVC's JSON) plus ``.dir``, so
``dvc_md5("data/processed")`` equals the ``md5`` that ``dvc repro`` or ``dvc add`` records for it, also
for an ad-hoc run outside DVC. tests/test_dvc_hash.py compares it with real ``dvc``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import yaml

CHUNK = 1 << 20


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_md5(path: str | Path) -> str:
    """DVC 3's md5 of a file, or of a folder (``<md5 of its manifest>.dir``; subfolders included)."""
    return lock_entry(path)["md5"]


def lock_entry(path: str | Path) -> dict:
    """What dvc.lock records for an output at ``path``: md5 and size, plus nfiles for a folder."""
    path = Path(path)
    if not path.is_dir():
        return {"md5": file_md5(path), "size": path.stat().st_size}
    manifest, size = [], 0
    for folder, _, files in os.walk(path):
        for name in files:
            full = Path(folder, name)
            manifest.append({"md5": file_md5(full), "relpath": full.relative_to(path).as_posix()})
            size += full.stat().st_size
    manifest.sort(key=lambda entry: entry["relpath"])
    text = json.dumps(manifest, sort_keys=True)  # DVC's separators and key order
    md5 = hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest() + ".dir"
    return {"md5": md5, "size": size, "nfiles": len(manifest)}


def committed_md5(path: str | Path, lock_file: str = "dvc.lock") -> str | None:
    """The md5 the committed ``dvc.lock`` (git's HEAD) records for the output ``path``, or None (no git, no
    committed lock, or no such output). In a DVC experiment HEAD is the experiment's baseline commit."""
    try:
        shown = subprocess.run(["git", "show", f"HEAD:./{lock_file}"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0:
        return None
    wanted = Path(path).as_posix().rstrip("/")
    for stage in (yaml.safe_load(shown.stdout) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if str(out.get("path", "")).rstrip("/") == wanted:
                return out.get("md5")
    return None


def is_committed(*paths: str | Path) -> bool:
    """Whether every output ``path`` holds what the committed dvc.lock records for it."""
    return all(Path(path).exists() and committed_md5(path) == lock_entry(path)["md5"] for path in paths)
