"""Real `dvc` in a temp copy of the repo (tracked and not-ignored files, as a fresh clone would have)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def copy_repo(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rel in filter(None, listed.split("\0")):
        src = REPO_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "copy")
    return dest


def smoke_copy(dest: Path) -> Path:
    """copy_repo with the smoke profile as conf/'s default, committed: params.yaml is the smoke one, and
    so is what DVC's Hydra composition makes of `dvc exp run -S key=value` (a README command as written)."""
    copy_repo(dest)
    config = dest / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  - profile: demo\n", "  - profile: smoke\n", 1))
    subprocess.run([sys.executable, "-m", "stages.common.config"], cwd=dest, env=env(), check=True)
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "smoke profile")
    return dest


def env() -> dict:
    """The venv's python and dvc first on PATH, so `python -m stages.x` in dvc.yaml resolves to it."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "DVC_NO_ANALYTICS": "1",
    }


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=env(), capture_output=True, text=True, check=True).stdout


def dvc(
    repo: Path, *args: str, check: bool = True, timeout: float = 1800, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=repo,
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result
