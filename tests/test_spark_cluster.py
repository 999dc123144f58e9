"""docs/scale.md's standalone Spark cluster, run as written on 127.0.0.1 (only the master's port and the workers'
folder changed): a master and two one-core workers started with pyspark's own spark-class, the batch job
through the spark:// URL, then the block's own `kill`. The masks equal predict's, the executors of both workers
took part, and no process the test started is left (each is found by a marker in its environment)."""

import json
import time
import uuid

import pytest

from mlflow_server import free_port
from spark_helpers import batch_env, docs_blocks, read_manifest, registered_project, run_bash, stop_marked

pytest.importorskip("pyspark", reason="the spark extra: pip install -e '.[spark]'")
pytestmark = pytest.mark.slow
DOCS_PORT, DOCS_WORK_DIR = "7077", "/tmp/spark-work"


def test_the_docs_standalone_cluster_segments_like_predict_and_leaves_no_process(tmp_path_factory):
    project = registered_project(tmp_path_factory.mktemp("cluster"))
    root = project["root"]
    [block] = [block for block in docs_blocks("Batch prediction on Spark") if "spark-class" in block]
    assert block.count("deploy.worker.Worker --cores 1") == 2 and "kill %1 %2 %3" in block
    port, work_dir = str(free_port()), root / "spark-work"
    script = block.replace(DOCS_PORT, port).replace(DOCS_WORK_DIR, str(work_dir))
    marker = uuid.uuid4().hex
    started = time.perf_counter()
    try:
        done = run_bash(script, root, batch_env(project["uri"], marker))
        print(f"standalone cluster block: {time.perf_counter() - started:.1f} s")
    finally:
        left = stop_marked(marker)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert left == [], f"processes left running after the block's kill: {left}"
    out, predicted = root / "out-cluster", project["predicted"]
    rows = read_manifest(out)
    assert {photo for photo, row in rows.items() if row["status"] == "failed"} == set(project["bad"])
    ok = [row for row in rows.values() if row["status"] == "ok"]
    assert len(ok) == 16
    for row in ok:
        name = row["mask"].removeprefix("class_id/")
        assert (out / row["mask"]).read_bytes() == (predicted / name).read_bytes(), row["photo"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["master"] == f"spark://127.0.0.1:{port}" and summary["segmented"] == 16
    [app] = list(work_dir.iterdir())  # one application; an executor on each worker (executor ids 0 and 1)
    assert sorted(path.name for path in app.iterdir()) == ["0", "1"]
