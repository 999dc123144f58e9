"""The package layout: stages/ holds only stage modules on top, shared code one level down, imported only downward."""

import ast
import re
import shutil

import yaml
from import_graph import LAYERS, TOOLS, layering_violations

from conftest import REPO_ROOT

STAGES_DIR = REPO_ROOT / "stages"


def is_stage_module(path) -> bool:
    """A pure run(cfg) plus a main that hands it to stage_main."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    has_run = any(isinstance(node, ast.FunctionDef) and node.name == "run" for node in tree.body)
    return has_run and re.search(r"^    stage_main\(run[,)]", path.read_text(encoding="utf-8"), re.M) is not None


def test_the_top_level_holds_only_stage_modules():
    top = sorted(path.name for path in STAGES_DIR.glob("*.py"))
    assert "__init__.py" in top
    not_stages = [name for name in top if name != "__init__.py" and not is_stage_module(STAGES_DIR / name)]
    assert not not_stages, f"not stage modules at the top of stages/: {not_stages}"
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    assert {f"{name}.py" for name in pipeline["stages"]} <= set(top)


def test_every_subpackage_is_a_known_layer_with_only_a_docstring_in_its_init():
    packages = sorted(path.parent.name for path in STAGES_DIR.glob("*/__init__.py"))
    assert set(packages) == set(LAYERS)
    assert not set(TOOLS) & {path.name for path in STAGES_DIR.iterdir()}, "tools live beside stages/, not in it"
    for name in packages:
        tree = ast.parse((STAGES_DIR / name / "__init__.py").read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"stages/{name}/__init__.py needs a docstring saying what lives there"
        # dvc.yaml does not list __init__ files as deps: they must not hold code
        assert len(tree.body) == 1, f"stages/{name}/__init__.py must hold only its docstring"
    package_doc = ast.get_docstring(ast.parse((STAGES_DIR / "__init__.py").read_text(encoding="utf-8")))
    positions = [package_doc.index(f"\n    {layer} ") for layer in LAYERS]
    assert positions == sorted(positions), "stages/__init__.py must list the layers in the tests' order"


def test_imports_follow_the_layer_order():
    assert layering_violations(STAGES_DIR) == []


def plant(tmp_path, file: str, line: str):
    copy = tmp_path / "stages"
    shutil.copytree(STAGES_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / file
    target.write_text(line + "\n" + target.read_text(encoding="utf-8"), encoding="utf-8")
    return layering_violations(copy)


def test_a_planted_upward_import_is_caught(tmp_path):
    found = plant(tmp_path, "data/labels.py", "from stages.tracking.runs import log_metrics")
    assert found == ["stages.data.labels -> stages.tracking.runs: imports upward (data is below tracking)"]


def test_a_planted_import_of_a_stage_module_is_caught(tmp_path):
    found = plant(tmp_path, "evaluation/figures.py", "import stages.predict")
    assert found == ["stages.evaluation.figures -> stages.predict: a subpackage imports a stage module"]


def test_a_planted_import_of_a_tool_is_caught(tmp_path):
    found = plant(tmp_path, "models/dovenet.py", "from demo_data import doves")
    assert found == ["stages.models.dovenet -> demo_data.doves: the pipeline imports a tool"]
    found = plant(tmp_path / "stage", "predict.py", "import demo_data.multiclass")  # nor may a stage module
    assert found == ["stages.predict -> demo_data.multiclass: the pipeline imports a tool"]
