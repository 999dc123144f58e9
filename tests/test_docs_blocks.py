"""Every fenced block of the docs and the README is claimed: a test runs it as written, reading it from its
page, or this file says why it cannot run here. A page that gains a block no entry claims fails here.

DOCS_BLOCKS maps (page, a marker only that block contains) to its claim:
- Runs("tests/test_x.py::name"): the test (or fixture) `name` runs the block, read from the page;
- Copies("docs/x.md"): a README block whose every line is in a block of that page, itself run by a test;
- NotRun("reason"): a diagram, a file tree, or a command that cannot run on CI's machine (and why).
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from stages.common.config import compose_config

from conftest import REPO_ROOT
from docs_pages import Block, blocks, pages


@dataclass(frozen=True)
class Runs:
    test: str


@dataclass(frozen=True)
class Copies:
    page: str


@dataclass(frozen=True)
class NotRun:
    reason: str


MAKE_DEMO = NotRun(
    "make demo installs .venv and runs the demo profile (a quarter of an hour on 2 cores): run by hand for "
    "docs/measurements.md; CI runs make test itself, and the same dvc repro on the smoke profile "
    "(tests/test_pipeline_e2e.py)"
)
DIAGRAM = NotRun("a diagram, not commands")
# docs/team.md's "Deployed for a team" blocks, run on loopback; docs/scale.md's sweep over two machines
DEPLOYED = Runs("tests/test_team_deployed.py::test_the_deployed_blocks_serve_mlflow_over_https_only")
SWEEP = Runs("tests/test_sweep_machines_e2e.py::sweep")

DOCS_BLOCKS: dict[tuple[str, str], Runs | Copies | NotRun] = {
    ("README.md", "make demo"): MAKE_DEMO,
    ("README.md", "──convert_json──▶"): DIAGRAM,
    ("README.md", "make mlflow-ui"): Copies("docs/experiments.md"),
    ("README.md", ".venv/bin/labelme data/raw"): Copies("docs/own-photos.md"),
    ("README.md", "stages.preannotate"): Copies("docs/annotate.md"),
    ("README.md", "dvc exp run -n lr-2e-3"): Copies("docs/experiments.md"),
    ("README.md", "mlflow models serve"): Copies("docs/serving.md"),
    ("docs/index.md", "make demo"): MAKE_DEMO,
    ("docs/index.md", "──convert_json──▶"): DIAGRAM,
    ("docs/getting-started.md", "make demo"): MAKE_DEMO,
    ("docs/own-photos.md", "# 1. Install labelme"): Runs("tests/test_own_photos_e2e.py::own_photos_repo"),
    ("docs/own-photos.md", "train_paddle.epochs=200"): NotRun(
        "hundreds of epochs at 256 px: a longer training than CI affords; its keys are checked below"
    ),
    ("docs/annotate.md", "# 1. Draft"): Runs(
        "tests/test_pipeline_e2e.py::test_annotate_faster_drafts_then_retrains_on_the_corrected_photos"
    ),
    ("docs/experiments.md", "dvc exp run -n lr-2e-3"): Runs(
        "tests/test_experiments_e2e.py::test_a_named_workspace_experiment_and_metrics_diff_as_the_docs_show_them"
    ),
    ("docs/experiments.md", "dvc queue start -j 2"): Runs("tests/test_experiments_e2e.py::swept"),
    ("docs/experiments.md", "make mlflow-ui"): Runs(
        "tests/test_docs_workflows.py::test_make_mlflow_ui_serves_the_page_it_prints"
    ),
    ("docs/experiments.md", "mlflow.paddle.load_model"): Runs(
        "tests/test_docs_workflows.py::test_a_registered_training_version_loads_with_the_paddle_flavour"
    ),
    ("docs/experiments.md", "dvc artifacts get"): Runs(
        "tests/test_pipeline_e2e.py::test_dvc_artifacts_get_fetches_a_tagged_model"
    ),
    ("docs/serving.md", "python -m stages.predict"): Runs(
        "tests/test_docs_workflows.py::test_predict_on_new_photos_writes_what_the_page_lists"
    ),
    ("docs/serving.md", "onnxruntime as ort"): Runs(
        "tests/test_docs_workflows.py::test_the_onnxruntime_snippet_gives_predicts_classes"
    ),
    ("docs/serving.md", "DeployConfig"): Runs(
        "tests/test_docs_workflows.py::test_the_paddleseg_deploy_snippet_gives_predicts_classes"
    ),
    ("docs/serving.md", "mlflow models serve"): Runs("tests/test_serve.py::served"),
    ("docs/serving.md", 'printf \'{"dataframe_split"'): Runs(
        "tests/test_serve.py::test_the_readmes_curl_and_python_client_give_back_predicts_mask"
    ),
    ("docs/serving.md", "import base64, requests"): Runs(
        "tests/test_serve.py::test_the_readmes_curl_and_python_client_give_back_predicts_mask"
    ),
    ("docs/paddleseg-models.md", "pp_liteseg_stdc1.yml"): Runs(
        "tests/test_pipeline_e2e.py::test_exp_run_with_another_paddleseg_config_finishes_through_report"
    ),
    ("docs/paddleseg-models.md", "pretrained: https://"): Runs(
        "tests/test_docs.py::test_the_pretrained_weights_fragment_fits_the_pp_liteseg_config"
    ),
    ("docs/gpu.md", "paddlepaddle-gpu"): NotRun(
        "needs an NVIDIA GPU and Paddle's own package index; CI's machine has neither"
    ),
    ("docs/gpu.md", "profile=full"): NotRun("the full profile trains for hours on a CPU; its keys are checked below"),
    ("docs/scale.md", "# 4 GPUs on one machine"): NotRun(
        "4 GPUs, or two machines of 8 GPUs; the launcher path runs on a CPU with nproc=2 in "
        "tests/test_distributed.py, and the keys are checked below"
    ),
    ("docs/team.md", "dvc add data/raw"): NotRun(
        "a shared folder or bucket of your own; the same steps (data/raw under DVC, push, clone, pull) run in "
        "tests/test_pipeline_e2e.py's team_repo and test_remote_round_trip, not read from the page"
    ),
    ("docs/team.md", "dvc pull --run-cache"): NotRun(
        "a clone of your own repository; tests/test_pipeline_e2e.py::test_remote_round_trip runs the same steps"
    ),
    ("docs/team.md", "make team-up"): Runs("tests/test_team_e2e.py::team"),
    ("docs/team.md", "doveseg-bob"): Runs("tests/test_team_e2e.py::team"),
    ("docs/team.md", "createuser --pwprompt"): DEPLOYED,
    ("docs/team.md", "/etc/mlflow/basic_auth.ini"): DEPLOYED,
    ("docs/team.md", "/etc/nginx/conf.d/mlflow.conf"): DEPLOYED,
    ("docs/team.md", "s3://doveseg-dvc/dvc"): DEPLOYED,
    ("docs/scale.md", "make setup-spark"): Runs("tests/test_spark_batch.py::project"),
    ("docs/scale.md", '"status": "ok"'): NotRun(
        "an example manifest line from a phone photo; tests/test_spark_batch.py checks every line's fields"
    ),
    ("docs/scale.md", "s3://doveseg-dvc/photos/"): Runs(
        "tests/test_sweep_machines_e2e.py::test_the_champion_segments_photos_from_the_team_bucket_into_it_on_spark"
    ),
    ("docs/scale.md", "spark-class"): Runs(
        "tests/test_spark_cluster.py::test_the_docs_standalone_cluster_segments_like_predict_and_leaves_no_process"
    ),
    ("docs/scale.md", "Baseline of the sweep"): SWEEP,
    ("docs/scale.md", "git clone <repo-url> doveseg-2"): SWEEP,
    ("docs/scale.md", "dvc queue start"): SWEEP,
    ("docs/scale.md", "dvc exp pull -r team origin"): SWEEP,
    ("docs/development.md", "stages/\n"): NotRun("a file tree, not commands"),
    ("docs/getting-started.md", "doveseg: test mIoU on the test split"): NotRun(
        "make demo's output, not a command; tests/test_summary.py checks it is the committed run's summary"
    ),
    ("docs/development.md", "docs/pictures.py"): NotRun(
        "needs a demo-profile dvc repro and the queued sweep (about an hour on 2 cores); its output, the "
        "committed docs/images/, is checked by tests/test_docs.py"
    ),
}


def all_blocks() -> list[Block]:
    return [found for page in pages() for found in blocks(page)]


def claims_of(found: Block) -> list[tuple[str, str]]:
    return [(page, marker) for page, marker in DOCS_BLOCKS if page == found.page and marker in found.code]


def defined_names(test_file: str) -> set[str]:
    tree = ast.parse((REPO_ROOT / test_file).read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_block_of_the_docs_is_claimed_once():
    unclaimed = [str(found) for found in all_blocks() if not claims_of(found)]
    assert not unclaimed, (
        "blocks no entry of DOCS_BLOCKS (tests/test_docs_blocks.py) claims: add the test that runs each, "
        f"as written, read from its page, or say why it cannot run: {unclaimed}"
    )
    several = [f"{found}: {claims_of(found)}" for found in all_blocks() if len(claims_of(found)) > 1]
    assert not several, f"blocks claimed more than once (make the markers unique): {several}"


def test_every_entry_claims_a_block():
    for page, marker in DOCS_BLOCKS:
        matching = [found for found in blocks(page) if marker in found.code]
        assert len(matching) == 1, f"DOCS_BLOCKS[{page!r}, {marker!r}] matches {len(matching)} blocks, not one"


@pytest.mark.parametrize(
    ("page", "claim"),
    [(page, claim) for (page, _), claim in DOCS_BLOCKS.items() if isinstance(claim, Runs)],
    ids=lambda value: getattr(value, "test", value),
)
def test_the_test_that_runs_a_block_exists_and_reads_its_page(page, claim):
    test_file, name = claim.test.split("::")
    assert (REPO_ROOT / test_file).is_file(), claim.test
    assert name in defined_names(test_file), f"{claim.test}: no function {name}"
    source = (REPO_ROOT / test_file).read_text(encoding="utf-8")
    assert page.removeprefix("docs/") in source, f"{claim.test} never names {page}: it must read the block there"


def test_readme_blocks_copy_blocks_that_a_test_runs():
    for (page, marker), claim in DOCS_BLOCKS.items():
        if not isinstance(claim, Copies):
            continue
        [copied] = [found for found in blocks(page) if marker in found.code]
        run = [found for found in blocks(claim.page) if any(isinstance(DOCS_BLOCKS[c], Runs) for c in claims_of(found))]
        lines = {line.split("  #")[0].strip() for found in run for line in found.code.splitlines()}
        for line in copied.code.splitlines():
            assert line.strip() in lines, f"{page}: {line.strip()!r} is in no block of {claim.page} that a test runs"


def test_every_reason_says_why():
    for key, claim in DOCS_BLOCKS.items():
        if isinstance(claim, NotRun):
            assert len(claim.reason) > 15, key


# --- the settings the blocks name exist, whether the block runs here or not -------------------------------

OVERRIDE = re.compile(r"^(?:\+|~)?(?P<key>[a-z_]+(?:\.[a-z_0-9]+)*)=(?P<value>.*)$")
COMMAND = re.compile(r"\b(?:dvc exp run|python -m stages\.\w+|stages\.\w+)\b")


def overrides_of(code: str) -> list[list[str]]:
    """The Hydra overrides of each `dvc exp run -S ...` or `python -m stages.<x> ...` command of a block."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        command = line.split(" #")[0]
        if not COMMAND.search(command):
            continue
        words = shlex.split(command)
        found = [word for word in words if OVERRIDE.match(word) and not word.startswith(("-", "http"))]
        commands.append([re.sub(r"=([^,\"']*),.*$", r"=\1", word) for word in found])  # a sweep: its first value
    return commands


def test_every_setting_a_block_names_exists_with_a_value_it_takes():
    checked = 0
    for found in all_blocks():
        for overrides in overrides_of(found.code):
            try:
                compose_config(overrides, REPO_ROOT / "conf")
            except (HydraException, OmegaConfBaseException) as err:
                raise AssertionError(f"{found}: {overrides} do not compose: {err}") from None
            checked += len(overrides)
    assert checked >= 20, f"only {checked} overrides found: is overrides_of still finding the commands?"


def test_a_misspelt_setting_is_caught():
    [overrides] = overrides_of("dvc exp run -S train_paddle.epoch=3")
    with pytest.raises((HydraException, OmegaConfBaseException)):
        compose_config(overrides, REPO_ROOT / "conf")
