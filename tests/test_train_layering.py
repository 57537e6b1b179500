"""Two structural rules, read from the source (docs/ARCHITECTURE.md, "Import layering" and "Run
directory"): no module under reclaif/train/ imports reclaif.distributed or reclaif.pipeline, and
no module but reclaif/run_layout.py spells a stage directory's `iter-` name. Each checker is
first shown to catch a planted violation, so a checker that sees nothing cannot pass."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from reclaif.pipeline.store import RunStore
from reclaif.run_layout import (RunLayout, is_iteration, iteration_of, stage_name,
                                training_stage)

PACKAGE = Path(__file__).resolve().parents[1] / "reclaif"
FORBIDDEN_IN_TRAIN = ("reclaif.distributed", "reclaif.pipeline")
LAYOUT_OWNER = PACKAGE / "run_layout.py"


def imported_modules(source: str, package: str) -> list[str]:
    """Every module a source imports, at module level or inside functions, relative imports
    resolved against `package` (the dotted package the file is in)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return out


def layer_violations(source: str, package: str = "reclaif.train") -> list[str]:
    return sorted({m for m in imported_modules(source, package)
                   if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_IN_TRAIN)})


def iteration_names(source: str) -> list[int]:
    """Lines that build an `iter-` stage name: an f-string with `iter-` in its text, or a plain
    string that starts with it (a path part, a glob, a prefix test). Prose that mentions
    iter-NNN inside a sentence (docstrings, help texts) is not a path and passes."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            if any(isinstance(v, ast.Constant) and "iter-" in str(v.value) for v in node.values):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("iter-"):
            lines.append(node.lineno)
    return sorted(set(lines))


def _modules(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def test_the_checkers_catch_planted_violations():
    assert layer_violations("from reclaif.distributed.pool import init_ray\n") == [
        "reclaif.distributed.pool", "reclaif.distributed.pool.init_ray"]
    assert layer_violations("def f():\n    import reclaif.pipeline.store\n") == [
        "reclaif.pipeline.store"]
    assert layer_violations("from ..pipeline import store\n", "reclaif.train") == [
        "reclaif.pipeline", "reclaif.pipeline.store"]
    assert layer_violations("from reclaif.faults import maybe_fail\n"
                            "from reclaif.run_layout import RunLayout\n") == []
    assert iteration_names('p = run / f"iter-{i:03d}" / "checkpoint"\n') == [1]
    assert iteration_names('x = 1\nfiles = root.glob("iter-*")\n') == [2]
    assert iteration_names('ok = stage.startswith("iter-")\n') == [1]
    assert iteration_names('"""Writes RUN/iter-NNN/pairs.jsonl."""\nhelp = "a run\'s iter-NNN"\n'
                           ) == []


@pytest.mark.parametrize("path", _modules(PACKAGE / "train"), ids=lambda p: p.name)
def test_train_imports_neither_distributed_nor_pipeline(path):
    package = "reclaif.train" + "".join(
        f".{p}" for p in path.parent.relative_to(PACKAGE / "train").parts)
    assert layer_violations(path.read_text(encoding="utf-8"), package) == [], path


def test_only_run_layout_spells_an_iteration_stage_name():
    found = {str(p.relative_to(PACKAGE)): lines for p in _modules(PACKAGE)
             if p != LAYOUT_OWNER and (lines := iteration_names(p.read_text(encoding="utf-8")))}
    assert found == {}, f"use reclaif.run_layout (stage_name, ITERATION_GLOB, ...): {found}"
    assert iteration_names(LAYOUT_OWNER.read_text(encoding="utf-8"))  # the owner does


def test_stage_names_and_the_store_share_one_layout(tmp_path):
    assert [stage_name(i) for i in (1, 2, 12)] == ["iter-001", "iter-002", "iter-012"]
    assert [iteration_of(s) for s in ("iter-007", "iter-1234", "sft", "base", "iter-x")] == [
        7, 1234, None, None, None]
    assert is_iteration(stage_name(3)) and not is_iteration("sft")
    assert (training_stage("sft", 0), training_stage("dpo", 4)) == ("sft", "iter-004")
    with pytest.raises(ValueError):
        stage_name(0)
    layout, store = RunLayout(tmp_path), RunStore(tmp_path)
    for name in ("checkpoint", "train_state", "train_metrics", "curves"):
        assert getattr(store, name)("iter-002") == getattr(layout, name)("iter-002")
    assert store.iteration(2) == layout.iteration(2) == tmp_path / "iter-002"
    assert store.pairs(2) == tmp_path / "iter-002" / "pairs.jsonl"
    assert store.checkpoint(stage_name(2)) == tmp_path / "iter-002" / "checkpoint"
    assert not store.iteration(2).exists()  # naming creates nothing; iter_dir does
    assert store.iter_dir(2).is_dir()
