"""The import graph of the stages package, read from the source (ast), for the layout and dvc.yaml tests."""

from __future__ import annotations

import ast
from pathlib import Path

# Subpackages, lowest layer first: each may import only those before it (the order in stages/__init__.py).
LAYERS = ("common", "data", "labelme", "evaluation", "models", "prediction", "tracking", "training", "reporting")
TOOLS = (
    "demo_data",
    "team_stack",
    "bench",
    "tests",
)  # beside stages/: they may import it; nothing in stages/ imports them


def module_name(path: Path, package_dir: Path) -> str:
    """stages/data/labels.py -> "stages.data.labels"; a package's __init__.py -> the package's name."""
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package_dir: Path) -> dict[str, Path]:
    return {module_name(path, package_dir): path for path in sorted(package_dir.rglob("*.py"))}


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """The stages.* modules a file imports (``from stages.x import y`` counts y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "stages":
                continue
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known
            )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "stages")
    return {name for name in found if name in known and known[name].name != "__init__.py"}


def imported_tools(path: Path) -> set[str]:
    """The modules of TOOLS a file imports (``from demo_data import doves`` -> demo_data.doves)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in TOOLS:
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] in TOOLS)
    return found


def closure(module: str, known: dict[str, Path]) -> set[str]:
    """``module`` and every stages module it imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imported_modules(known[current], known))
    return seen


def layer_of(module: str) -> str | None:
    """The subpackage of a module ("data" for stages.data.labels), None for a top-level stage module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def layering_violations(package_dir: Path) -> list[str]:
    """Every import that breaks the rule of stages/__init__.py, as 'importer -> imported: why'."""
    known = modules(package_dir)
    problems = []
    for importer, path in known.items():
        problems += [f"{importer} -> {tool}: the pipeline imports a tool" for tool in sorted(imported_tools(path))]
        importer_layer = layer_of(importer)
        if importer_layer is None:
            continue  # stage modules may import any subpackage
        for imported in sorted(imported_modules(path, known)):
            imported_layer = layer_of(imported)
            if imported_layer is None:
                problems.append(f"{importer} -> {imported}: a subpackage imports a stage module")
            elif imported_layer == importer_layer:
                continue
            elif imported_layer not in LAYERS or importer_layer not in LAYERS:
                problems.append(f"{importer} -> {imported}: {imported_layer or importer_layer} is not a known layer")
            elif LAYERS.index(imported_layer) > LAYERS.index(importer_layer):
                problems.append(
                    f"{importer} -> {imported}: imports upward ({importer_layer} is below {imported_layer})"
                )
    return problems


def stage_deps(stage: str, package_dir: Path) -> list[str]:
    """The stages/ files a stage imports, as dvc.yaml lists them: the stage, then the layers top down."""
    known = modules(package_dir)

    def order(name: str):
        layer = layer_of(name)
        return (0, 0, name) if layer is None else (1, -LAYERS.index(layer), name)

    return [
        known[name].relative_to(package_dir.parent).as_posix()
        for name in sorted(closure(f"stages.{stage}", known), key=order)
    ]


def rewrite_dvc_yaml_deps(dvc_yaml: Path, package_dir: Path) -> str:
    """dvc.yaml's text with each stage's run of ``- stages/...py`` deps replaced by what the stage imports."""
    out, stage = [], None
    for line in dvc_yaml.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            stage = stripped[:-1]  # a stage under `stages:` (a foreach stage keeps its name)
        if stripped.startswith("- stages/") and stripped.endswith(".py"):
            indent = line[: len(line) - len(line.lstrip())]
            if out and out[-1].strip().startswith("- stages/"):
                continue  # the run was written at its first line
            out += [f"{indent}- {dep}" for dep in stage_deps(stage, package_dir)]
            continue
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python tests/import_graph.py predict: the deps lines for dvc.yaml
    import sys

    root = Path(__file__).resolve().parents[1]
    if sys.argv[1:] == ["--rewrite-dvc-yaml"]:  # every stage's deps, rewritten in place
        (root / "dvc.yaml").write_text(rewrite_dvc_yaml_deps(root / "dvc.yaml", root / "stages"), encoding="utf-8")
    else:
        for dep in stage_deps(sys.argv[1], root / "stages"):
            print(f"      - {dep}")
