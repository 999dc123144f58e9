"""Small data sets: what the trainers adapt (and say, and record in MLflow), and what fails before anything
starts, under Paddle's launcher too (stages.training.adaptation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from stages import train_paddle, train_paddleseg
from stages.common.config import StageError, load_params
from stages.training import distributed, launcher
from stages.training.adaptation import fit_batch, fit_interval, fit_processes, summary_line

from tiny_pipeline import make_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINERS = {"train_paddle": train_paddle, "train_paddleseg": train_paddleseg}


def photos(count: int) -> dict[str, tuple[int, int]]:
    return {f"dove_{i}": (24 + i, 30) for i in range(count)}


@pytest.fixture
def tiny_set(tmp_path):
    """make(count) -> overrides for a processed set whose train split holds ``count`` photos."""

    def make(count: int) -> list[str]:
        return [
            *make_dataset(tmp_path / "data", photos(count)),
            f"paths.checkpoints_dir={tmp_path / 'ckpt'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ]

    return make


@pytest.fixture
def single_process(monkeypatch):
    for name in (distributed.WORLD_SIZE_ENV, distributed.RANK_ENV, distributed.LOCAL_SIZE_ENV):
        monkeypatch.delenv(name, raising=False)


# --- the rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch, samples, processes, used",
    [(8, 6, 1, 6), (8, 5, 2, 4), (8, 7, 3, 6), (1, 6, 2, 2), (8, 8, 2, None), (4, 100, 2, None), (3, 3, 1, None)],
)
def test_the_global_batch_fits_the_photos_and_gives_every_process_one(batch, samples, processes, used):
    change = fit_batch("train_x", batch, samples, processes)
    assert (change.used if change else None) == used
    if change:
        assert change.key == "train_x.batch_size" and change.requested == batch


def test_processes_are_lowered_to_the_photos_on_one_machine_only():
    settings, changes = fit_processes("train_x", {"nproc": 4}, 3)
    assert settings.nproc == 3 and [c.key for c in changes] == ["train_x.distributed.nproc"]
    assert changes[0].describe() == "4 -> 3: 3 training photo(s), at least one per process"
    settings, changes = fit_processes("train_x", {"nproc": 2}, 2)
    assert settings.nproc == 2 and changes == []
    with pytest.raises(StageError, match=r"train_x.distributed.nnodes=1.*train_x.distributed.nproc=1"):
        fit_processes("train_x", {"nproc": 2, "nnodes": 2, "master": "10.0.0.1:8090"}, 3)


def test_intervals_longer_than_the_training_are_its_length():
    assert fit_interval("train_x", "eval_interval", 100, 40).used == 40
    assert fit_interval("train_x", "eval_interval", 40, 40) is None


def test_the_adaptations_are_one_line():
    changes = [fit_batch("train_x", 8, 6, 1), fit_interval("train_x", "eval_interval", 100, 40)]
    line = summary_line("train_x", changes)
    assert "\n" not in line and line.startswith("train_x: adapted to the data")
    assert "batch_size 8 -> 6: 6 training photos per epoch; eval_interval 100 -> 40" in line
    assert summary_line("train_x", []) == ""


# --- each trainer's fit_to_data ---------------------------------------------------------------------


def test_train_paddleseg_adapts_batch_and_intervals_and_leaves_the_given_config_alone(tiny_set):
    cfg = load_params(
        [
            *tiny_set(5),
            "train_paddleseg.batch_size=8",
            "train_paddleseg.iters=30",
            "train_paddleseg.eval_interval=70",
            "train_paddleseg.log_interval=10",
        ],
        REPO_ROOT,
    )
    fitted, changes, _ = train_paddleseg.fit_to_data(cfg, processes=2)
    assert {c.key: c.used for c in changes} == {"train_paddleseg.batch_size": 4, "train_paddleseg.eval_interval": 30}
    assert fitted.train_paddleseg.batch_size == 4 and fitted.train_paddleseg.eval_interval == 30
    assert cfg.train_paddleseg.batch_size == 8 and cfg.train_paddleseg.eval_interval == 70
    assert train_paddleseg.fit_to_data(fitted, processes=2)[1] == []  # what it adapted is met


def test_train_paddle_adapts_batch_and_a_warmup_longer_than_the_training(tiny_set):
    cfg = load_params(
        [
            *tiny_set(6),
            "train_paddle.batch_size=8",
            "train_paddle.epochs=10",
            "train_paddle.warmup_steps=40",
            "train_paddle.distributed.nproc=1",
        ],
        REPO_ROOT,
    )
    fitted, changes, _ = train_paddle.fit_to_data(cfg, processes=1)
    assert {c.key: c.used for c in changes} == {"train_paddle.batch_size": 6, "train_paddle.warmup_steps": 1}
    assert fitted.train_paddle.warmup_steps == 1
    capped = load_params([*tiny_set(6), "train_paddle.batch_size=8", "train_paddle.max_train_images=4"], REPO_ROOT)
    assert train_paddle.fit_to_data(capped, processes=1)[0].train_paddle.batch_size == 4


@pytest.mark.parametrize("stage", sorted(TRAINERS))
def test_the_demo_profile_on_the_demo_sized_split_adapts_nothing(stage, tiny_set):
    cfg = load_params(tiny_set(87), REPO_ROOT)  # the demo's 124 photos x 0.7
    assert TRAINERS[stage].fit_to_data(cfg)[1] == []


# --- before Paddle's launcher --------------------------------------------------------------------------


@pytest.fixture
def launches(monkeypatch, single_process):
    """The commands relaunch_if_configured would exec (the repo root as cwd: it composes params.yaml)."""
    monkeypatch.chdir(REPO_ROOT)
    executed = []
    monkeypatch.setattr(os, "execv", lambda path, args: executed.append(args))
    return executed


def relaunch(stage: str, argv: list[str]) -> None:
    launcher.relaunch_if_configured(stage, argv, check=lambda cfg: TRAINERS[stage].fit_to_data(cfg)[2])


@pytest.mark.parametrize("stage", sorted(TRAINERS))
def test_fewer_photos_than_processes_start_fewer_processes(stage, tiny_set, launches):
    relaunch(stage, [*tiny_set(3), f"{stage}.distributed.nproc=4"])
    [command] = launches
    assert command[command.index("--nproc_per_node") + 1] == "3"
    launches.clear()
    relaunch(stage, [*tiny_set(1), f"{stage}.distributed.nproc=auto"])  # one photo: no launcher at all
    assert launches == []


@pytest.mark.parametrize("stage", sorted(TRAINERS))
@pytest.mark.parametrize(
    "override, message",
    [
        ("{stage}.batch_size=0", r"{stage}\.batch_size must be >= 1"),
        ("{stage}.distributed.nnodes=2", r"{stage}\.distributed.*nnodes=1.*nproc=1 or less"),
    ],
)
def test_settings_that_cannot_be_adapted_stop_before_the_launcher(
    stage, override, message, tiny_set, launches, tmp_path
):
    argv = [
        *tiny_set(3),
        f"{stage}.distributed.nproc=2",
        f"{stage}.distributed.master=127.0.0.1:1",
        override.format(stage=stage),
    ]
    with pytest.raises(SystemExit, match=message.format(stage=stage)):
        relaunch(stage, argv)
    assert launches == [] and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_the_stage_command_checks_before_it_launches(tiny_set, tmp_path):
    """The real entry point: `python -m stages.train_paddleseg` with 2 processes asked, a bad value given."""
    command = [
        sys.executable,
        "-m",
        "stages.train_paddleseg",
        *tiny_set(3),
        "train_paddleseg.distributed.nproc=2",
        "train_paddleseg.iters=0",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_") and k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1 and "error: train_paddleseg.iters must be >= 1, got 0" in done.stderr
    assert "launcher" not in done.stdout + done.stderr and not (tmp_path / "mlflow.db").exists()


# --- a real run -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_run_trains_with_the_adapted_batch_says_so_and_records_it(tiny_set, single_process, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_params(
        [
            *tiny_set(3),
            "train_paddleseg.input_size=32",
            "train_paddleseg.crop_size=32",
            "train_paddleseg.iters=2",
            "train_paddleseg.batch_size=8",
            "train_paddleseg.eval_interval=70",
            "train_paddleseg.num_threads=1",
            "train_paddleseg.distributed.nproc=1",
        ],
        REPO_ROOT,
    )
    result = train_paddleseg.run(cfg)
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if "adapted" in line]
    assert line.startswith("train_paddleseg: adapted to the data") and "batch_size 8 -> 3" in line
    assert "eval_interval 70 -> 2" in line
    metrics = json.loads(train_paddleseg.output_paths(cfg)["metrics"].read_text())
    assert metrics["batch_size"] == 3 and metrics["epochs"] == 2.0 and result["iters"] == 2
    params = mlflow.MlflowClient(str(cfg.mlflow.tracking_uri)).get_run(result["run_id"]).data.params
    assert params["train_paddleseg.batch_size"] == "3" and params["train_paddleseg.eval_interval"] == "2"
    assert params["adapted.train_paddleseg.batch_size"] == "8 -> 3: 3 training photos per epoch"
    assert params["adapted.train_paddleseg.eval_interval"] == "70 -> 2: longer than train_paddleseg.iters=2"
