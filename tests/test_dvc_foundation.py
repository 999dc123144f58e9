"""`dvc repro` of the first two stages in a temp copy of the repo: real DVC, real data."""

import pytest
import yaml

from dvc_helpers import copy_repo, dvc


@pytest.mark.slow
def test_repro_build_splits_from_a_fresh_copy_then_status_is_clean(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    dvc(repo, "repro", "build_splits")
    counts = {
        name: len((repo / "data/splits" / f"{name}.txt").read_text().splitlines()) for name in ("train", "val", "test")
    }
    assert sum(counts.values()) == 124 and all(counts.values())
    assert (repo / "data/processed/manifest.json").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"convert_json", "build_splits"} <= set(lock["stages"])
    status = dvc(repo, "status", "convert_json", "build_splits")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    # A build_splits param change reruns build_splits only.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["build_splits"]["seed"] = 123
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(repo, "status", "convert_json", "build_splits")
    assert "build_splits" in status.stdout and "convert_json" not in status.stdout
