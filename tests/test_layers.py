"""The import graph has layers (docs/ARCHITECTURE.md, "Import layering"): every import in
reclaif/, at module level or inside a function, points to a lower layer or stays in its own
package. Read from the source with ast, so a lazy import counts as much as a top-level one."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

# bottom-up; one line may import the lines before it, never one after, nor a neighbour
LAYERS: list[set[str]] = [
    {"errors", "records", "faults", "run_layout"},
    {"atomic", "config", "logs"},
    {"config_load", "data"},
    {"prompts", "parsing"},
    {"llm"},
    {"metrics"},
    {"baselines"},
    {"evidence"},
    {"recommender", "teacher", "judge"},
    {"comparison"},
    {"distributed", "train"},
    {"pipeline"},
    {"bench", "plan"},
    {"cli"},
    {"__main__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def imports(root: Path) -> list[tuple[str, str, int, str]]:
    """(importing unit, file, line, imported unit) for every reclaif import under root/reclaif."""
    out = []
    for path in sorted((root / "reclaif").rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        me = rel.parts[1] if len(rel.parts) > 1 else ""
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = ([f"reclaif.{a.name}" for a in node.names] if node.module == "reclaif"
                         else [node.module])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("reclaif.") and _unit(name) != me:
                    out.append((me, str(rel), node.lineno, _unit(name)))
    return out


def upward(root: Path) -> list[str]:
    bad = []
    for me, where, line, other in imports(root):
        if me not in RANK or other not in RANK:
            bad.append(f"{where}:{line}: {me} or {other} has no layer in LAYERS")
        elif RANK[other] >= RANK[me]:
            bad.append(f"{where}:{line}: {me} (layer {RANK[me]}) imports {other} "
                       f"(layer {RANK[other]})")
    return bad


def test_no_import_runs_back_up_a_layer(repo_root):
    assert upward(repo_root) == []


def test_every_package_has_a_layer(repo_root):
    units = {p.stem if p.is_file() else p.name for p in (repo_root / "reclaif").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert units - set(RANK) == set(), "give the new package a line in LAYERS"


@pytest.mark.parametrize("planted", [
    ("reclaif/baselines/floors.py", "from reclaif.recommender import Recommender\n"),
    ("reclaif/judge/rubric.py", "def f():\n    from reclaif.teacher import OfflineTeacher\n"),
])
def test_the_check_catches_a_planted_upward_import(repo_root, tmp_path, planted):
    import shutil

    shutil.copytree(repo_root / "reclaif", tmp_path / "reclaif",
                    ignore=shutil.ignore_patterns("samples", "__pycache__"))
    where, code = planted
    with open(tmp_path / where, "a") as f:
        f.write("\n" + code)
    assert upward(tmp_path) and all(where.removesuffix(".py") in b for b in upward(tmp_path))
