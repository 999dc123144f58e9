"""dvc.yaml's artifacts: both models, found by real DVC in a temp copy of the repo, named as in the Model Registry."""

import dvc.api
from dvc.repo import Repo

from stages.common.outputs import trainer_output_paths

from dvc_helpers import copy_repo, git

MODELS = ("paddle", "paddleseg")


def test_both_models_are_dvc_model_artifacts_named_as_registered(tmp_path, make_cfg):
    repo = copy_repo(tmp_path / "repo")
    cfg = make_cfg()
    with Repo(str(repo)) as dvc_repo:
        artifacts = dvc_repo.artifacts.read()["dvc.yaml"]
    names = {model: str(cfg.mlflow.registered_models[model]) for model in MODELS}
    assert set(artifacts) == set(names.values())
    for model, name in names.items():
        artifact = artifacts[name]
        assert artifact.type == "model" and artifact.desc and artifact.labels
        assert artifact.path == trainer_output_paths(cfg, model)["model_dir"].as_posix()

    # A version is a git tag (DVC's GTO convention); DVC's API then finds the artifact at that commit.
    git(repo, "tag", "-a", f"{names['paddleseg']}@v0.1.0", "-m", "UNet v0.1.0")
    shown = dvc.api.artifacts_show(names["paddleseg"], repo=str(repo))
    assert shown == {"rev": git(repo, "rev-parse", "HEAD").strip(), "path": "models/paddleseg"}
