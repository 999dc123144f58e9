"""dvc.yaml lists exactly the stages/ modules each stage imports, directly or through other modules."""
import ast
from pathlib import Path

import yaml

from conftest import REPO_ROOT

STAGES_DIR = REPO_ROOT / "stages"


def imported_stage_modules(module: str) -> set[str]:
    tree = ast.parse((STAGES_DIR / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "stages":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("stages."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("stages."))
    return found


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(imported_stage_modules(current))
    return seen


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    for name, stage in pipeline["stages"].items():
        assert stage["cmd"].startswith(f"python -m stages.{name}")
        listed = {Path(dep).stem for dep in stage["deps"] if str(dep).startswith("stages/")}
        assert listed == closure(name), f"{name}: dvc.yaml lists {sorted(listed)}, imports {sorted(closure(name))}"


def test_the_pipeline_has_all_six_stages_in_order():
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    assert list(pipeline["stages"]) == ["convert_json", "build_splits", "train_paddle", "train_paddleseg",
                                        "predict", "report"]
