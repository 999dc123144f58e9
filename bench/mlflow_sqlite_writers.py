"""Several processes writing to one SQLite MLflow store at once, as `dvc queue start -j N` does.

    .venv/bin/python bench/mlflow_sqlite_writers.py [--writers 2 4] [--runs 6] [--steps 40] [--fresh]

Each writer process does what a queued experiment's stages do, --runs times over: a training run (params
in batches, tags, per-step metrics, a registered model version), then report's part (test metrics added
through MlflowClient, the champion alias). Every MLflow call is counted: done, retried after "database
is locked", failed. Two configurations on fresh stores, in the same run:
  plain     MLflow as it comes (its own 20 s SQLite busy timeout, the rollback journal)
  doveseg   the same calls through stages.tracking.store.store_call (retries on "database is locked")
--fresh starts the writers on a store that does not exist yet (each creates the tables and the experiment).
Printed per configuration and writer count: calls, retries, failures, wall time, and whether every metric
arrived and the registered versions are distinct.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "bench-model"


def writer(uri: str, care: bool, index: int, runs: int, steps: int, results, barrier) -> None:
    import mlflow

    from stages.tracking import store as tracking

    counts = {"calls": 0, "retries": 0, "failures": 0, "errors": []}

    def call(fn, *args, **kwargs):
        counts["calls"] += 1
        before = tracking.STORE_RETRIES["count"]
        try:
            if care:
                return tracking.store_call(fn, *args, **kwargs)
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - counted and reported
            counts["failures"] += 1
            counts["errors"].append(f"{type(err).__name__}: {str(err)[:120]}")
            return None
        finally:
            counts["retries"] += tracking.STORE_RETRIES["count"] - before

    versions = []
    barrier.wait()  # all writers start together, imports done
    client = mlflow.MlflowClient(uri)
    experiment = call(client.get_experiment_by_name, "bench")  # on a fresh store: each writer creates it
    if experiment is None:
        try:
            client.create_experiment(
                "bench", artifact_location=Path(uri[len("sqlite:///") :]).with_name("mlruns").as_uri()
            )
        except Exception:  # noqa: BLE001 - another writer made it first
            pass
        experiment = call(client.get_experiment_by_name, "bench")
    if experiment is None:
        results.put({**counts, "versions": []})
        return
    for number in range(runs):
        run = call(client.create_run, experiment.experiment_id, run_name=f"w{index}-r{number}")
        if run is None:
            continue
        run_id = run.info.run_id
        params = [mlflow.entities.Param(f"p{k}", str(k)) for k in range(150)]
        for start in range(0, len(params), 100):
            call(client.log_batch, run_id, params=params[start : start + 100])
        call(client.set_tag, run_id, "dvc_exp_name", f"w{index}")
        for step in range(steps):
            now = int(time.time() * 1000)
            call(
                client.log_batch,
                run_id,
                metrics=[
                    mlflow.entities.Metric(key, step * 0.01, now, step)
                    for key in ("train/loss", "val/mIoU", "val/acc", "epoch")
                ],
            )
        if not call(client.search_registered_models, f"name = '{MODEL}'"):
            try:  # as mlflow's log_model(registered_model_name=...) does: another writer may make it first
                client.create_registered_model(MODEL)
            except mlflow.exceptions.MlflowException as err:
                if "already exists" not in str(err):
                    raise
        version = call(client.create_model_version, MODEL, source=f"runs:/{run_id}/model", run_id=run_id)
        if version is not None:
            versions.append(str(version.version))
        call(client.set_terminated, run_id)
        now = int(time.time() * 1000)
        call(client.log_batch, run_id, metrics=[mlflow.entities.Metric(f"test/m{k}", 0.5, now, 0) for k in range(30)])
        if version is not None:
            call(client.set_registered_model_alias, MODEL, "champion", version.version)
    counts["versions"] = versions
    results.put(counts)


def measure(writers: int, care: bool, runs: int, steps: int, fresh: bool) -> dict:
    import mlflow

    with tempfile.TemporaryDirectory() as root:
        uri = f"sqlite:///{root}/mlflow.db"
        client = mlflow.MlflowClient(uri)
        if not fresh:  # a store made before (by the first `dvc repro`), as usual
            client.create_experiment("bench", artifact_location=Path(root, "mlruns").as_uri())
        context = multiprocessing.get_context("spawn")
        results, barrier = context.Queue(), context.Barrier(writers + 1)
        procs = [
            context.Process(target=writer, args=(uri, care, i, runs, steps, results, barrier)) for i in range(writers)
        ]
        for proc in procs:
            proc.start()
        barrier.wait()
        started = time.perf_counter()
        counts = [results.get(timeout=900) for _ in procs]
        for proc in procs:
            proc.join()
        wall = time.perf_counter() - started
        experiment = client.get_experiment_by_name("bench")
        if experiment is None:
            return {
                "calls": sum(c["calls"] for c in counts),
                "retries": sum(c["retries"] for c in counts),
                "failures": sum(c["failures"] for c in counts),
                "wall_s": time.perf_counter() - started,
                "runs_complete": f"0/{writers * runs}",
                "versions_distinct": False,
                "errors": sorted({e for c in counts for e in c["errors"]})[:3],
            }
        stored = client.search_runs([experiment.experiment_id], max_results=1000)
        complete = sum(
            1
            for run in stored
            if len(client.get_metric_history(run.info.run_id, "val/mIoU")) == steps
            and len(run.data.params) == 150
            and "test/m29" in run.data.metrics
        )
        versions = [v for c in counts for v in c["versions"]]
    return {
        "calls": sum(c["calls"] for c in counts),
        "retries": sum(c["retries"] for c in counts),
        "failures": sum(c["failures"] for c in counts),
        "wall_s": wall,
        "runs_complete": f"{complete}/{writers * runs}",
        "versions_distinct": len(versions) == len(set(versions)) and len(versions) == writers * runs,
        "errors": sorted({e for c in counts for e in c["errors"]})[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--runs", type=int, default=6, help="training runs per writer")
    parser.add_argument("--steps", type=int, default=40, help="metric steps per run")
    parser.add_argument("--fresh", action="store_true", help="the writers start on a store that does not exist yet")
    args = parser.parse_args()
    store = "fresh store" if args.fresh else "existing store"
    for writers in args.writers:
        figures = {}
        for name, care in (("plain", False), ("doveseg", True)):
            figures[name] = result = measure(writers, care, args.runs, args.steps, args.fresh)
            print(
                f"{store}, {writers} writers, {name:8s} calls {result['calls']:5d}  retries {result['retries']:4d}  "
                f"failures {result['failures']:4d}  runs complete {result['runs_complete']:>6s}  "
                f"versions distinct {result['versions_distinct']}  wall {result['wall_s']:6.1f} s",
                flush=True,
            )
            for error in result["errors"]:
                print(f"    {error}")
        print(
            f"{store}, {writers} writers: doveseg/plain wall {figures['doveseg']['wall_s'] / figures['plain']['wall_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
