"""stages.training.distributed and stages.training.launcher: single-process behaviour, batch sharding, launch
commands, and (slow) a real 2-process CPU training under `python -m paddle.distributed.launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import paddle
import paddle.distributed as dist
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stages.common.config import StageError
from stages.training import distributed, launcher
from stages.training.distributed import RankBatches
from stages.training.launcher import LaunchSettings, launch_command, launch_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_ENV = ("PADDLE_TRAINERS_NUM", "PADDLE_TRAINER_ID", "PADDLE_LOCAL_SIZE")


@pytest.fixture
def single_process(monkeypatch):
    for name in LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)


# --- a single process -----------------------------------------------------------------------------


def test_single_process_is_rank_0_of_1_and_main(single_process):
    assert distributed.world_size() == 1
    assert distributed.rank() == 0
    assert distributed.is_main_process()
    assert not distributed.launched()


def test_rank_and_world_size_come_from_the_launcher_env(monkeypatch):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "4")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "3")
    assert (distributed.world_size(), distributed.rank()) == (4, 3)
    assert not distributed.is_main_process()
    assert distributed.launched()


def test_cpu_threads_share_the_cores_among_this_machines_processes(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("PADDLE_LOCAL_SIZE", raising=False)
    assert distributed.cpu_threads(0) == cores
    assert distributed.cpu_threads(3) == 3
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", str(2 * cores))
    assert distributed.cpu_threads(0) == 1


def test_collective_helpers_are_no_ops_in_one_process(single_process):
    distributed.init_if_launched()
    assert not dist.is_initialized()
    distributed.barrier()  # dist.barrier() would raise: no process group
    array = np.arange(6).reshape(2, 3)
    assert distributed.sum_over_processes(array) is array
    net = paddle.nn.Linear(2, 2)
    assert distributed.data_parallel(net) is net


# --- sharding batches -----------------------------------------------------------------------------


class CountingSampler(paddle.io.Sampler):
    def __init__(self, size):
        super().__init__()
        self.size, self.epoch = size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(range(self.size))

    def __len__(self):
        return self.size


def test_rank_batches_in_one_process_are_the_batches(single_process):
    batches = paddle.io.BatchSampler(sampler=CountingSampler(5), batch_size=2)
    shard = RankBatches(batches)
    assert list(shard) == [[0, 1], [2, 3], [4]]
    assert len(shard) == 3


def test_rank_batches_split_each_global_batch_in_consecutive_parts():
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    parts = [list(RankBatches(batches, num_replicas=2, replica_rank=r)) for r in range(2)]
    assert parts[0] == [[0, 1], [4, 5], [8, 9]]
    assert parts[1] == [[2, 3], [6, 7], [10, 8]]  # the short batch padded with its first index


def test_rank_batches_set_epoch_reaches_the_wrapped_sampler():
    sampler = CountingSampler(4)
    shard = RankBatches(paddle.io.BatchSampler(sampler=sampler, batch_size=2), num_replicas=2, replica_rank=1)
    assert shard.sampler is sampler  # loader.batch_sampler.sampler.set_epoch(...) keeps working
    shard.set_epoch(7)
    assert sampler.epoch == 7


def test_rank_batches_refuse_a_rank_outside_the_world():
    with pytest.raises(ValueError, match=r"not in 0..1"):
        RankBatches([[0]], num_replicas=2, replica_rank=2)


@given(st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=9), max_size=5), st.integers(1, 5))
def test_rank_batches_cover_every_sample_in_equal_parts(batches, replicas):
    parts = [list(RankBatches(batches, num_replicas=replicas, replica_rank=r)) for r in range(replicas)]
    for step, batch in enumerate(batches):
        sizes = {len(part[step]) for part in parts}
        assert len(sizes) == 1  # every process runs the same steps on the same amount of data
        joined = [index for part in parts for index in part[step]]
        assert joined[: len(batch)] == batch  # in order, padding only at the end...
        assert set(joined[len(batch) :]) <= set(batch)  # ...made of the batch's own samples
        assert len(joined) - len(batch) < replicas


# --- launch settings and commands -----------------------------------------------------------------


def test_launch_settings_default_to_one_process():
    settings = launch_settings(None)
    assert settings == LaunchSettings()
    assert not settings.needs_launcher
    assert launch_settings({"nproc": 2}).needs_launcher
    assert launch_settings({"nnodes": 2, "master": "10.0.0.1:8090"}).needs_launcher


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="checks the CPU rule of nproc: auto")
@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 2), (16, 2)])
def test_auto_nproc_on_cpu_is_two_processes_when_there_are_two_cores(monkeypatch, cores, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    settings = launch_settings({"nproc": "auto"})
    assert settings.nproc == expected
    assert settings.needs_launcher == (expected > 1)


def test_auto_nproc_with_devices_is_one_process_per_device():
    assert launcher.auto_nproc("0,1,2") == 3


@pytest.mark.parametrize(
    "values, message",
    [
        ({"nprocs": 2}, "unknown keys"),
        ({"nproc": 0}, "must be >= 1"),
        ({"nproc": "many"}, "a number of processes or 'auto'"),
        ({"nnodes": 2}, "needs master"),
        ({"nnodes": 2, "master": "h:1", "node_rank": 2}, "not in 0..1"),
    ],
)
def test_launch_settings_refuse_bad_values(values, message):
    with pytest.raises(StageError, match=message):
        launch_settings(values, "train_x.distributed")


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="checks the CPU build's refusal of devices")
def test_devices_are_refused_on_a_cpu_build():
    # The launcher itself fails on a CPU build with "ValueError: substring not found" for --devices.
    with pytest.raises(StageError, match=r"needs a GPU build"):
        launch_settings({"nproc": 2, "devices": "0,1"})


def test_launch_command_runs_the_module_under_the_launcher():
    command = launch_command("stages.train_x", 2, extra=["train_x.epochs=1"], log_dir="/tmp/logs")
    assert command == [
        sys.executable,
        "-m",
        "paddle.distributed.launch",
        "--nproc_per_node",
        "2",
        "--log_dir",
        "/tmp/logs",
        "--log_overwrite",
        "true",
        sys.executable,
        "-u",
        "-m",
        "stages.train_x",
        "train_x.epochs=1",
    ]


def test_launch_command_for_several_machines():
    command = launch_command(
        "stages.train_x", 8, "0,1,2,3,4,5,6,7", nnodes=2, master="10.0.0.1:8090", node_rank=1, log_dir="logs"
    )
    launcher_args = command[3 : command.index("-u") - 1]
    assert launcher_args == [
        "--nproc_per_node",
        "8",
        "--devices",
        "0,1,2,3,4,5,6,7",
        "--nnodes",
        "2",
        "--master",
        "10.0.0.1:8090",
        "--rank",
        "1",
        "--log_dir",
        "logs",
        "--log_overwrite",
        "true",
    ]


# --- relaunching a stage --------------------------------------------------------------------------


@pytest.fixture
def stage_dir(tmp_path, monkeypatch, single_process):
    """A folder with a params.yaml holding one stage block, as the current directory."""
    (tmp_path / "params.yaml").write_text(
        "train_x:\n  epochs: 3\n  distributed:\n    nproc: 1\n    nnodes: 1\n    master: null\n"
    )
    monkeypatch.chdir(tmp_path)
    executed = []
    monkeypatch.setattr(os, "execv", lambda path, args: executed.append(args))
    return executed


def test_relaunch_does_nothing_for_one_process(stage_dir):
    launcher.relaunch_if_configured("train_x", ["train_x.epochs=1"])
    assert stage_dir == []


def test_relaunch_runs_the_same_command_under_the_launcher(stage_dir):
    launcher.relaunch_if_configured("train_x", ["train_x.distributed.nproc=2", "train_x.epochs=1"])
    [command] = stage_dir
    assert command[:5] == [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"]
    assert command[-5:] == ["-u", "-m", "stages.train_x", "train_x.distributed.nproc=2", "train_x.epochs=1"]


def test_relaunch_does_nothing_inside_a_launched_process(stage_dir, monkeypatch):
    monkeypatch.setenv("PADDLE_TRAINER_ID", "0")
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    launcher.relaunch_if_configured("train_x", ["train_x.distributed.nproc=2"])
    assert stage_dir == []


def test_relaunch_stops_on_bad_settings(stage_dir):
    with pytest.raises(SystemExit, match=r"train_x.distributed: nnodes=2 needs master"):
        launcher.relaunch_if_configured("train_x", ["train_x.distributed.nnodes=2"])
    assert stage_dir == []


# --- a real 2-process CPU training ----------------------------------------------------------------

# paddle.Model.fit on a tiny conv net (no BatchNorm, so 2 processes x 2 samples must equal 1 process x
# 4 samples), sharded with RankBatches. Each rank reports its parameters; only the main one writes model.json.
TINY_TRAINING = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import numpy as np
    import paddle
    from paddle.static import InputSpec
    from stages.training import distributed

    out = Path(sys.argv[1])
    paddle.set_device("cpu")
    distributed.init_if_launched()
    paddle.seed(distributed.rank())  # different on purpose: DataParallel must copy rank 0's weights

    class Data(paddle.io.Dataset):
        def __init__(self, n, seed):
            rng = np.random.default_rng(seed)
            self.x = rng.standard_normal((n, 3, 8, 8)).astype("float32")
            self.y = rng.integers(0, 3, (n, 1, 8, 8)).astype("int64")
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            return self.x[i], self.y[i]

    class PixelAccuracy(paddle.metric.Metric):
        def __init__(self):
            super().__init__()
            self.reset()
        def name(self):
            return "acc"
        def compute(self, logits, label):
            return paddle.argmax(logits, axis=1, keepdim=True), label
        def update(self, pred, label):
            self.right += int((pred == label).sum()); self.total += pred.size
        def accumulate(self):
            return self.right / self.total
        def reset(self):
            self.right = self.total = 0

    def loader(dataset, global_batch):
        batches = distributed.RankBatches(paddle.io.BatchSampler(dataset, batch_size=global_batch))
        return paddle.io.DataLoader(dataset, batch_sampler=batches, return_list=True)

    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.ReLU(), paddle.nn.Conv2D(8, 3, 1))
    model = paddle.Model(paddle.jit.to_static(net, full_graph=True),
                         inputs=[InputSpec([None, 3, 8, 8], "float32", "x")],
                         labels=[InputSpec([None, 1, 8, 8], "int64", "y")])
    model.prepare(paddle.optimizer.Adam(0.01, parameters=net.parameters()),
                  paddle.nn.CrossEntropyLoss(axis=1), PixelAccuracy())
    model.fit(loader(Data(10, 1), 4), loader(Data(7, 2), 4), epochs=2, verbose=0)
    scores = model.evaluate(loader(Data(7, 2), 4), verbose=0)

    if distributed.is_main_process():  # rank 0 does slow work alone: the others wait at the barrier
        time.sleep(1)
        (out / "model.json").write_text(json.dumps({"world_size": distributed.world_size()}))
    distributed.barrier()
    total = distributed.sum_over_processes(np.array([distributed.rank() + 1], dtype=np.int64))
    weights = np.concatenate([p.numpy().ravel() for p in net.parameters()])
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps({
        "weights": weights.tolist(), "val_acc": scores["acc"], "rank_sum": int(total[0]),
        "saw_model_after_barrier": (out / "model.json").is_file()}))
""")


def _worker_logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("workerlog.*")))


@pytest.mark.slow
def test_two_cpu_processes_train_as_one_under_the_launcher(tmp_path):
    (tmp_path / "tiny_training.py").write_text(TINY_TRAINING)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    results = {}
    for nproc in (2, 1):
        out = tmp_path / f"out{nproc}"
        out.mkdir()
        if nproc == 2:
            command = launch_command("tiny_training", 2, extra=[str(out)], log_dir=str(tmp_path / "logs"))
        else:
            command = [sys.executable, "-m", "tiny_training", str(out)]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + _worker_logs(tmp_path / "logs")
        results[nproc] = out

    two = [json.loads((results[2] / f"rank{r}.json").read_text()) for r in range(2)]
    one = json.loads((results[1] / "rank0.json").read_text())
    # Gradients were averaged: both ranks hold the same weights, those of one process on the global batch.
    assert np.array_equal(two[0]["weights"], two[1]["weights"])
    np.testing.assert_allclose(two[0]["weights"], one["weights"], rtol=1e-4, atol=1e-6)
    # Distributed evaluation gathered the shards and trimmed the padding: the single-process score.
    assert two[0]["val_acc"] == two[1]["val_acc"] == pytest.approx(one["val_acc"])
    assert [r["rank_sum"] for r in two] == [3, 3]
    assert all(r["saw_model_after_barrier"] for r in two)
    # Only the main process wrote the output.
    assert json.loads((results[2] / "model.json").read_text()) == {"world_size": 2}
    assert sorted(p.name for p in results[2].iterdir()) == ["model.json", "rank0.json", "rank1.json"]


# --- both trainers under the launcher -------------------------------------------------------------

# Per trainer: tiny settings, and how many validations (MLflow val/mIoU steps) they give.
TRAINERS = {
    "train_paddle": (
        [
            "train_paddle.input_size=32",
            "train_paddle.crop_size=32",
            "train_paddle.epochs=2",
            "train_paddle.batch_size=4",
        ],
        [1, 2],
    ),
    "train_paddleseg": (
        [
            "train_paddleseg.input_size=32",
            "train_paddleseg.crop_size=32",
            "train_paddleseg.iters=4",
            "train_paddleseg.batch_size=4",
            "train_paddleseg.eval_interval=2",
            "train_paddleseg.log_interval=1",
        ],
        [2, 4],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(TRAINERS))
def test_trainer_with_nproc_2_runs_under_the_launcher_and_only_rank_0_writes(stage, tmp_path):
    """`<stage>.distributed.nproc=2`: the unchanged stage command relaunches itself under Paddle's launcher
    (2 CPU processes, gloo); both train, one MLflow run holds each validation once, rank 0 writes outputs."""
    from tiny_pipeline import make_dataset

    settings, eval_steps = TRAINERS[stage]
    store = tmp_path / "mlflow"
    store.mkdir()
    log_dir = tmp_path / "launcher-logs"
    overrides = [
        *make_dataset(tmp_path / "data"),
        f"paths.checkpoints_dir={tmp_path / 'checkpoints'}",
        f"mlflow.tracking_uri=sqlite:///{store / 'mlflow.db'}",
        f"mlflow.artifact_location={store / 'mlruns'}",
        *settings,
        f"{stage}.distributed.nproc=2",
        f"{stage}.distributed.log_dir={log_dir}",
    ]
    env = {k: v for k, v in os.environ.items() if k not in (*LAUNCHER_ENV, "MLFLOW_TRACKING_URI")}
    done = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + _worker_logs(log_dir)
    assert "paddle.distributed.launch --nproc_per_node 2" in done.stdout
    # Both processes ran the stage to its end; only rank 0 got the outputs' summary.
    logs = {p.name: p.read_text() for p in log_dir.glob("workerlog.*")}
    assert sorted(logs) == ["workerlog.0", "workerlog.1"]
    assert "written by the main process (rank 0)" in logs["workerlog.1"]
    assert "written by the main process" not in logs["workerlog.0"]

    model = stage.removeprefix("train_")
    metrics = json.loads((tmp_path / "data" / "metrics" / f"{stage}.json").read_text())
    assert metrics["train_images_per_second"] > 0 and 0 <= metrics["best_val_mIoU"] <= 1
    run_id = json.loads((tmp_path / "data" / "models" / model / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    [only_run] = client.search_runs([client.get_run(run_id).info.experiment_id])  # one run, not one per process
    assert only_run.info.run_id == run_id and only_run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val/mIoU")] == eval_steps  # each logged once
    assert only_run.data.params[f"{stage}.distributed.nproc"] == "2"
