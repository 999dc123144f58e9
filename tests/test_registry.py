"""The one champion (stages.tracking.registry) on a real SQLite store: the best on the contest's test set, by
one rule, whatever experiments try; labels that say which architecture a version holds."""

import json
from pathlib import Path

import mlflow
import pytest
import yaml

from stages.tracking import registry
from stages.tracking.store import store_call

SERVED = "served"


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One SQLite store for this module (a fresh one costs seconds)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.create_experiment("registry", artifact_location=(root / "mlruns").as_uri())
    return uri


def scored_version(uri: str, name: str, miou: float | None, test_set: str = "set-1", tags=None) -> str:
    """A version of ``name`` whose training run report scored ``miou`` on ``test_set`` (as report logs it)."""
    client = mlflow.MlflowClient(uri)
    run = store_call(client.create_run, client.get_experiment_by_name("registry").experiment_id)
    if miou is not None:
        store_call(client.log_metric, run.info.run_id, "test/mIoU", miou)
    store_call(client.set_tag, run.info.run_id, registry.TEST_SET_TAG, test_set)
    if not store_call(client.search_registered_models, f"name = '{name}'"):
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException:
            pass  # a parallel test process made it first
    version = store_call(
        client.create_model_version, name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags
    )
    return str(version.version)


def champion(uri: str, name: str) -> str | None:
    version = mlflow.MlflowClient(uri).get_registered_model(name).aliases.get(registry.CHAMPION)
    return None if version is None else str(version)


def crown(uri: str, name: str, test_set: str = "set-1", workspace: bool = False, committed: bool = True):
    return registry.crown(mlflow.MlflowClient(uri), name, test_set, workspace, committed)


def test_the_champion_is_the_best_on_the_contest_and_no_worse_or_other_experiment_moves_it(uri):
    name = "one-rule"
    scored_version(uri, name, 0.6)
    best = scored_version(uri, name, 0.7)
    first = crown(uri, name, workspace=True)
    assert (first.champion.version, first.moved, first.contest, first.note) == (best, True, "set-1", None)
    assert champion(uri, name) == best
    assert mlflow.MlflowClient(uri).get_registered_model(name).tags[registry.CONTEST_TAG] == "set-1"

    scored_version(uri, name, 0.65)  # a worse experiment
    assert crown(uri, name).champion.version == best and champion(uri, name) == best
    scored_version(uri, name, 0.7)  # a tie keeps the current champion
    tie = crown(uri, name)
    assert tie.champion.version == best and not tie.moved
    scored_version(uri, name, None)  # scored nothing: not a candidate
    other = scored_version(uri, name, 0.99, test_set="set-2")  # another split (say build_splits.seed=7)
    elsewhere = crown(uri, name, test_set="set-2")
    assert elsewhere.champion is None and not elsewhere.moved and champion(uri, name) == best
    assert "scored test set set-2, the champion is chosen on set-1" in elsewhere.note
    assert crown(uri, name).champion.version == best  # set-2's 0.99 never competes on set-1

    better = scored_version(uri, name, 0.9)
    assert crown(uri, name).champion.version == better and champion(uri, name) == better
    assert other != better


def test_a_workspace_report_on_a_new_data_version_starts_a_new_contest_and_says_so(uri):
    name = "new-data"
    old = scored_version(uri, name, 0.9, test_set="old")
    assert crown(uri, name, test_set="old", workspace=True).champion.version == old
    new = scored_version(uri, name, 0.5, test_set="new")
    moved = crown(uri, name, test_set="new", workspace=True)
    assert moved.champion.version == new and champion(uri, name) == new
    assert "new data version" in moved.note and "test set new (was old)" in moved.note
    # an experiment still on the old data can no longer take it back, however good
    scored_version(uri, name, 0.95, test_set="old")
    assert crown(uri, name, test_set="old").champion is None and champion(uri, name) == new


def test_before_any_contest_an_experiment_competes_only_on_the_committed_data(uri):
    name = "no-contest-yet"
    version = scored_version(uri, name, 0.8, test_set="exp")
    refused = crown(uri, name, test_set="exp", committed=False)
    assert refused.champion is None and champion(uri, name) is None and "no contest has begun" in refused.note
    assert crown(uri, name, test_set="exp", committed=True).champion.version == version


def test_a_version_whose_training_run_is_gone_is_skipped_with_a_warning(uri, capsys):
    name = "runs-gone"
    client = mlflow.MlflowClient(uri)
    kept = scored_version(uri, name, 0.6)
    deleted = scored_version(uri, name, 0.9)
    purged = scored_version(uri, name, 0.95)
    client.delete_run(client.get_model_version(name, deleted).run_id)
    purged_run = client.get_model_version(name, purged).run_id
    client.delete_run(purged_run)
    mlflow.tracking._tracking_service.utils._get_store(uri)._hard_delete_run(purged_run)  # as `mlflow gc` does
    result = crown(uri, name, workspace=True)
    assert result.champion.version == kept and champion(uri, name) == kept
    err = capsys.readouterr().err
    assert f"{name} version {deleted}: its training run" in err and f"{name} version {purged}: its" in err


class SlowToMove:
    """A client whose first alias move is preceded by ``meanwhile()``: another report that scores and crowns
    between this report's read and its move, the interleaving that leaves a stale champion."""

    def __init__(self, uri: str, meanwhile):
        self.client, self.meanwhile = mlflow.MlflowClient(uri), meanwhile

    def __getattr__(self, name):
        return getattr(self.client, name)

    def set_registered_model_alias(self, *args):
        if self.meanwhile:
            self.meanwhile, meanwhile = None, self.meanwhile
            meanwhile()
        return self.client.set_registered_model_alias(*args)


def test_two_reports_crowning_at_once_leave_one_champion_on_the_best(uri):
    name = "racing"
    scored_version(uri, name, 0.1)
    crown(uri, name, workspace=True)
    scored_version(uri, name, 0.5)  # report A scored; it reads, then B scores a better one and crowns
    better = []

    def report_b():
        better.append(scored_version(uri, name, 0.6))
        assert crown(uri, name).champion.version == better[0]

    result = registry.crown(SlowToMove(uri, report_b), name, "set-1", workspace=False, committed=True)
    assert result.champion.version == better[0] and champion(uri, name) == better[0]


def test_champion_aliases_an_older_doveseg_left_on_the_trainers_models_are_retired(uri):
    client = mlflow.MlflowClient(uri)
    version = scored_version(uri, "old-trainer", 0.5)
    client.set_registered_model_alias("old-trainer", registry.CHAMPION, version)
    registry.retire_old_aliases(client, ["old-trainer", "never-made"])
    assert champion(uri, "old-trainer") is None


def test_versions_say_which_architecture_they_hold(uri, tmp_path):
    client = mlflow.MlflowClient(uri)
    model_dir = tmp_path / "paddleseg"
    model_dir.mkdir()
    meta = {"input_size": [80, 80], "class_names": ["_background_", "dove"], "mean": [0.5] * 3, "std": [0.5] * 3}
    (model_dir / "meta.json").write_text(json.dumps({**meta, "architecture": "PPLiteSeg"}))
    (model_dir / "paddleseg.yml").write_text(
        yaml.safe_dump({"model": {"type": "PPLiteSeg", "backbone": {"type": "STDC1"}}})
    )
    trained = scored_version(uri, "trained-any", 0.5)
    config = "conf/paddleseg/pp_liteseg_stdc1.yml"
    label = registry.label_training_version(client, "trained-any", trained, model_dir, "train_paddleseg", config)
    version = client.get_model_version("trained-any", trained)
    assert label == "PPLiteSeg (STDC1)" and version.tags["architecture"] == label
    assert version.tags["paddleseg_config"] == config and "UNet" not in version.description
    assert version.description == f"PPLiteSeg (STDC1), trained by train_paddleseg, config {config}"
    assert registry.label_training_version(client, "trained-any", trained, tmp_path / "nothing", "x") is None

    served = scored_version(uri, SERVED, 0.5)
    registry.label_serving_version(client, SERVED, served, "paddleseg", label, f"trained-any/{trained}")
    version = client.get_model_version(SERVED, served)
    assert version.tags == {"model": "paddleseg", "architecture": label, "training_model": f"trained-any/{trained}"}
    assert version.description.startswith("PPLiteSeg (STDC1) (paddleseg), served on onnxruntime")
    assert Path(model_dir / "meta.json").is_file()
