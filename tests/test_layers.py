"""The import graph has layers (docs/ARCHITECTURE.md, "Import layering"): every import in
reclaif/, at module level or inside a function, points to a lower layer or stays in its own
package. Read from the source with ast, so a lazy import counts as much as a top-level one.
The one exception, the benchmarks above the CLI, is loaded only by `reclaif bench`'s handler."""
from __future__ import annotations

import ast
import re
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
    {"plan"},
    {"cli"},
    {"bench"},  # outside the library: nothing imports it but ENTRY, lazily
    {"__main__"},
]
# The one import up the layers: `reclaif bench NAME` loads the benchmark it runs inside its
# handler, so `reclaif --help` and the library never load the benchmarks.
ENTRY = ("reclaif/cli/bench", "bench")
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def imports(root: Path) -> list[tuple[str, str, int, str, bool]]:
    """(importing unit, file, line, imported unit, inside a function) for every reclaif import
    under root/reclaif."""
    out = []
    for path in sorted((root / "reclaif").rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        me = rel.parts[1] if len(rel.parts) > 1 else ""
        tree = ast.parse(path.read_text(), str(path))
        lazy = {id(n) for f in ast.walk(tree)
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = ([f"reclaif.{a.name}" for a in node.names] if node.module == "reclaif"
                         else [node.module])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("reclaif.") and _unit(name) != me:
                    out.append((me, str(rel), node.lineno, _unit(name), id(node) in lazy))
    return out


def upward(root: Path) -> list[str]:
    bad = []
    for me, where, line, other, lazy in imports(root):
        if (where, other) == ENTRY and lazy:
            continue
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
    # the benchmarks: only the bench handler, and only inside it
    ("reclaif/pipeline/report.py", "def f():\n    from reclaif.bench.e2e import run\n"),
    ("reclaif/cli/run.py", "def f():\n    from reclaif.bench.e2e import run\n"),
    ("reclaif/cli/bench.py", "from reclaif.bench.e2e import run\n"),
    ("reclaif/config.py", "from reclaif.config_load import load_config\n"),
])
def test_the_check_catches_a_planted_upward_import(repo_root, tmp_path, planted):
    import shutil

    shutil.copytree(repo_root / "reclaif", tmp_path / "reclaif",
                    ignore=shutil.ignore_patterns("samples", "__pycache__"))
    where, code = planted
    with open(tmp_path / where, "a") as f:
        f.write("\n" + code)
    assert upward(tmp_path) and all(where.removesuffix(".py") in b for b in upward(tmp_path))


def unexplained_lazy_imports(root: Path) -> list[str]:
    """`file:line` of each import of a reclaif module inside a function without its reason: a
    comment on its own line(s), or above it past only imports, blank lines and the if/elif/
    else/try lines of a dispatch (one comment may head several)."""
    bad = []
    for path in sorted((root / "reclaif").rglob("*.py")):
        text = path.read_text()
        lines, tree = text.splitlines(), ast.parse(text, str(path))
        import_lines = {i for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                        for i in range(n.lineno - 1, n.end_lineno)}
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(f):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                if not any(n == "reclaif" or n.startswith("reclaif.") for n in names):
                    continue
                if any(_reason(lines[i]) for i in range(node.lineno - 1, node.end_lineno)):
                    continue
                i = node.lineno - 2
                while i >= 0 and (i in import_lines or not lines[i].strip() or lines[i].strip()
                                  .startswith(("if ", "elif ", "else:", "try:"))):
                    i -= 1
                if i < 0 or not lines[i].strip().startswith("#"):
                    bad.append(f"{path.relative_to(root)}:{node.lineno}")
    return sorted(set(bad))


def _reason(line: str) -> bool:
    """A comment that says something: `# noqa: F401` alone is no reason."""
    comment = line.partition("#")[2]
    return bool(re.sub(r"noqa(:\s*[A-Z]+[0-9]+(,\s*[A-Z]+[0-9]+)*)?|type:\s*ignore(\[[^]]*\])?",
                       "", comment).strip())


def test_every_import_inside_a_function_says_why(repo_root):
    assert unexplained_lazy_imports(repo_root) == []


def test_the_reason_check_catches_a_bare_lazy_import(tmp_path):
    (tmp_path / "reclaif").mkdir()
    (tmp_path / "reclaif" / "m.py").write_text(
        "def bare():\n    from reclaif.errors import ConfigError\n"
        "def noqa():\n    import reclaif.errors  # noqa: F401\n"
        "def said():\n    from reclaif.errors import ConfigError  # a cycle: errors imports m\n"
        "def above(x):\n    # torch: only where a model is trained\n    if x:\n"
        "        from reclaif.train import sft\n    else:\n        from reclaif.train import dpo\n")
    assert unexplained_lazy_imports(tmp_path) == ["reclaif/m.py:2", "reclaif/m.py:4"]
