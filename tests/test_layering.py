"""The layering of docs/architecture.md, checked: no module imports a module of a higher floor."""

from __future__ import annotations

import ast
from pathlib import Path

import medad

# docs/architecture.md, "Floors": lowest first; a module may import its own floor and the ones below
FLOORS = [
    {"config", "catalog", "files", "runtime", "device_policy", "linalg", "ssim", "progress", "distributed",
     "presets", "budgets", "runlock", "runfolder", "atomic", "outputs", "experiment_log"},
    {"data", "augment", "evaluation", "report"},
    {"models"},
    {"methods"},
    {"train"},
    {"detectors"},
    {"model"},
    {"pipeline", "prediction", "export", "compare", "service", "cli", "__main__", "__init__"},
]
SOURCE = Path(medad.__file__).parent


def floor_of(module: str) -> int:
    """Floor of ``medad.<part>...``; the package itself (``medad``: the public API) is the top."""
    part = module.split(".")[1] if "." in module else "__init__"
    matches = [i for i, names in enumerate(FLOORS) if part in names]
    assert matches, f"{module} is on no floor: add it to FLOORS and docs/architecture.md"
    return matches[0]


def imports_of(path: Path) -> set[str]:
    """Every medad module ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medad":
            found |= {f"medad.{a.name}" for a in node.names} if node.module == "medad" else {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "medad"}
    return found


def test_every_module_is_on_a_floor_and_imports_no_higher_floor():
    upward = []
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        own = floor_of(module if module != "medad" else "medad.__init__")
        upward += [f"{module} → {target}" for target in sorted(imports_of(path))
                   if target.split(".")[1] not in {"__version__"} and floor_of(target) > own]
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from medad.pipeline import train_run\n")
    assert imports_of(bad) == {"medad.pipeline"} and floor_of("medad.pipeline") > floor_of("medad.data.readers")
