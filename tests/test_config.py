import json
import os
import shutil
import subprocess
import sys

import yaml
from omegaconf import OmegaConf

from stages.common.config import compose_config

from conftest import REPO_ROOT


def test_params_yaml_equals_the_composed_defaults_of_conf():
    composed = OmegaConf.to_container(compose_config(conf_dir=REPO_ROOT / "conf"), resolve=True)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert params == composed, "params.yaml is stale: run `make params` (python -m stages.common.config)"


def test_required_data_keys_exist(make_cfg):
    cfg = make_cfg()
    for key in ("raw_dir", "labels", "processed_dir", "splits_dir"):
        assert isinstance(cfg.data[key], str)


def test_every_profile_composes_and_names_itself():
    for profile in ("demo", "smoke", "full"):
        cfg = compose_config([f"profile={profile}"], conf_dir=REPO_ROOT / "conf")
        assert cfg.profile == profile


def run_stage(cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_stage_cli_takes_overrides_without_hydra_folders_or_chdir(tmp_path):
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    processed = tmp_path / "processed"
    processed.mkdir()
    samples = [{"stem": f"s{i}", "class_pixels": {"_background_": 5, "dove": i % 2}} for i in range(20)]
    (processed / "manifest.json").write_text(json.dumps({"samples": samples}))
    result = run_stage(
        tmp_path,
        "stages.build_splits",
        "data.processed_dir=processed",
        "data.splits_dir=out/splits",
        "build_splits.seed=5",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "splits" / "train.txt").is_file()  # relative to the cwd: no chdir
    leftovers = {p.name for p in tmp_path.iterdir()} - {"params.yaml", "processed", "out"}
    assert not leftovers, f"Hydra left {leftovers}"


def test_stage_errors_are_one_clear_line_not_a_traceback(tmp_path):
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    result = run_stage(tmp_path, "stages.build_splits", "data.processed_dir=nowhere")
    assert result.returncode == 1
    assert "error: nowhere/manifest.json: manifest not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_stages_epilogue_prints_after_its_json(tmp_path):
    """report ends `dvc repro` with its summary: stage_main prints the result, then the epilogue, last."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    script = (
        "from stages.common.config import stage_main\n"
        "stage_main(lambda cfg: {'seed': cfg.seed}, lambda cfg, result: print('last:', result['seed']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "seed=7"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().splitlines()[-1] == "last: 7"
    assert json.loads(done.stdout[: done.stdout.index("last:")]) == {"seed": 7}
