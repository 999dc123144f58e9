"""Shared test fixtures. Stage tests build a cfg from the repo's params.yaml plus overrides."""
from __future__ import annotations

from pathlib import Path

import pytest

from stages.config import load_params

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_cfg():
    """make_cfg("data.raw_dir=...", ...) -> the params.yaml config with those overrides."""
    def _make(*overrides: str):
        return load_params(list(overrides), REPO_ROOT)
    return _make
