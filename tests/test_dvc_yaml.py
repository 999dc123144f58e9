"""dvc.yaml lists exactly the stages/ modules each stage imports, directly or through other modules."""

import yaml
from import_graph import closure, modules

from conftest import REPO_ROOT

STAGES_DIR = REPO_ROOT / "stages"


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    known = modules(STAGES_DIR)
    for name, definition in pipeline["stages"].items():
        stage = definition.get("do", definition)  # a foreach stage: one definition for each item
        assert stage["cmd"].startswith(f"python -m stages.{name}")
        listed = {dep for dep in stage["deps"] if str(dep).startswith("stages/") and str(dep).endswith(".py")}
        imported = {known[module].relative_to(REPO_ROOT).as_posix() for module in closure(f"stages.{name}", known)}
        assert listed == imported, (
            f"{name}: dvc.yaml lists {sorted(listed - imported)} it does not import, misses {sorted(imported - listed)}"
        )


def test_the_report_depends_on_its_templates():
    deps = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["report"]["deps"]
    assert "stages/reporting/templates" in deps and (REPO_ROOT / "stages/reporting/templates/report.md.j2").is_file()


def test_the_pipeline_has_all_seven_stages_in_order():
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    assert list(pipeline["stages"]) == [
        "convert_json",
        "build_splits",
        "train_paddle",
        "train_paddleseg",
        "export",
        "predict",
        "report",
    ]
    # export runs once per trained model, each on its own trainer's output.
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert pipeline["stages"]["export"]["foreach"] == params["export"]["models"] == params["predict"]["models"]
    assert "${paths.models_dir}/${item}" in pipeline["stages"]["export"]["do"]["deps"]
