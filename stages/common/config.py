"""Hydra plumbing shared by every stage: the stage entry point, and composing conf/ into params.yaml."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

# Hydra must neither chdir nor write outputs/ and .hydra/. These settings cannot live in params.yaml,
# because DVC's Hydra composition drops the `hydra` key, so every stage passes them first
# (the user's own overrides come after them and still win).
HYDRA_QUIET_OVERRIDES = (
    "hydra.run.dir=.",
    "hydra.output_subdir=null",
    "hydra/job_logging=stdout",
    "hydra/hydra_logging=disabled",
)


class StageError(Exception):
    """Bad input or config. Stages print its message without a traceback and exit 1."""


def stage_main(run: Callable[[DictConfig], dict], epilogue: Callable[[DictConfig, dict], None] | None = None) -> None:
    """Run ``run(cfg)`` as a Hydra app over ./params.yaml, accepting ``key=value`` overrides; print its result as
    JSON, then call ``epilogue(cfg, result)`` (what a person should read last)."""
    params = Path.cwd() / "params.yaml"
    if not params.is_file():
        sys.exit(f"error: no params.yaml in {Path.cwd()}; run stages from the repository root")

    @hydra.main(version_base="1.3", config_path=str(Path.cwd()), config_name="params")
    def _main(cfg: DictConfig) -> None:
        try:
            result = run(cfg)
        except StageError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        print(json.dumps(result, indent=2, default=str))
        if epilogue is not None:
            epilogue(cfg, result)

    sys.argv[1:1] = HYDRA_QUIET_OVERRIDES
    _main()


def compose_config(overrides: Sequence[str] = (), conf_dir: str | Path = "conf") -> DictConfig:
    """Compose conf/config.yaml as DVC's Hydra composition does (for tests and `make params`)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(Path(conf_dir).resolve())):
        return compose(config_name="config", overrides=list(overrides))


def load_params(overrides: Sequence[str] = (), repo_root: str | Path = ".") -> DictConfig:
    """Load params.yaml with overrides, as a stage's main would (for tests calling run() directly)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(Path(repo_root).resolve())):
        return compose(config_name="params", overrides=list(overrides))


def write_params(overrides: Sequence[str] = (), conf_dir: str | Path = "conf", out: str | Path = "params.yaml") -> None:
    """Compose conf/ into params.yaml, e.g. ``python -m stages.common.config profile=smoke``."""
    cfg = OmegaConf.to_container(compose_config(overrides, conf_dir), resolve=True)
    Path(out).write_text(yaml.safe_dump(cfg, sort_keys=False))


if __name__ == "__main__":
    write_params(sys.argv[1:])
