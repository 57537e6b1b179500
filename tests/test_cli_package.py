"""The command line lives in reclaif/cli/ only: no library module reads argv or holds a
handler, `reclaif --help` loads no torch, and `reclaif config show` prints every key."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from reclaif.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "reclaif"


def argv_readers(root: Path) -> list[str]:
    """`file:line what` for each argparse import or cmd_* function outside root/cli/."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if (root / "cli") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n.split(".")[0] == "argparse" for n in names):
                found.append(f"{path.relative_to(root)}:{node.lineno} imports argparse")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.name.startswith("cmd_"):
                found.append(f"{path.relative_to(root)}:{node.lineno} defines {node.name}")
    return found


def test_no_library_module_imports_argparse_or_defines_a_handler():
    assert argv_readers(PACKAGE) == []


def test_the_layout_check_finds_an_argparse_import_and_a_handler(tmp_path):
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "ok.py").write_text("import argparse\ndef cmd_x(a): pass\n")
    (tmp_path / "lib.py").write_text("def f():\n    from argparse import Namespace\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.py").write_text("class A:\n    def cmd_run(self): pass\n")
    assert argv_readers(tmp_path) == ["lib.py:2 imports argparse", "sub/m.py:2 defines cmd_run"]


def test_help_imports_no_torch_ray_or_deepspeed():
    code = ("import sys; from reclaif.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'deepspeed', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", ["reclaif", "reclaif.cli"])
def test_python_dash_m_runs_the_command(module):
    p = subprocess.run([sys.executable, "-m", module, "config", "--help"], capture_output=True,
                       text=True, cwd=PACKAGE.parent)
    assert p.returncode == 0 and "show" in p.stdout


def _show(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["config", "show", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _entry(text: str, key: str) -> list[str]:
    """The two lines `config show` prints for `key`."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
    return lines[i:i + 2]


def test_config_show_prints_every_key_with_value_default_and_help(capsys):
    from reclaif.config import RunConfig
    from reclaif.config_load import describe

    rc, out, _ = _show(capsys)
    assert rc == 0
    assert _entry(out, "dpo.beta") == ["dpo.beta = 0.1   [default: 0.1]", "    DPO beta (Eq. 2)."]
    kernel = _entry(out, "sft.logprob_kernel")
    assert kernel[0] == 'sft.logprob_kernel = "auto"   [default: "auto"]'
    assert kernel[1].endswith("One of: auto, torch, triton.")
    assert "# dpo: DPO iterations." in out.splitlines()
    keys = [line.split(" = ")[0] for line in out.splitlines() if " = " in line
            and not line.startswith(" ")]
    assert keys == [k.key for k in describe(RunConfig())]
    assert {"judge.llm.backend", "report.trackers", "launch.template", "name"} <= set(keys)


def test_config_show_applies_a_config_file_and_overrides(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("dpo:\n  beta: 0.3\n", encoding="utf-8")
    rc, out, _ = _show(capsys, "--config", str(f), "dpo.beta=0.5", "report.trackers=[]")
    assert rc == 0
    assert _entry(out, "dpo.beta")[0] == "dpo.beta = 0.5   [default: 0.1]   (changed)"
    assert _entry(out, "report.trackers")[0] == \
        'report.trackers = []   [default: ["tensorboard"]]   (changed)'
    rc, out, _ = _show(capsys, "--config", str(f))
    assert _entry(out, "dpo.beta")[0] == "dpo.beta = 0.3   [default: 0.1]   (changed)"


def test_config_show_unknown_key_or_bad_choice_is_one_line_error(capsys):
    rc, out, err = _show(capsys, "dpo.betta=0.5")
    assert rc == 2 and out == ""
    assert err == "reclaif: error: unknown config key 'dpo.betta' (did you mean beta?)\n"
    rc, _, err = _show(capsys, "dpo.logprob_kernel=cuda")
    assert rc == 2
    assert err == ("reclaif: error: dpo.logprob_kernel: 'cuda' is not one of "
                   "['auto', 'torch', 'triton']\n")


def test_flag_choices_come_from_the_config_literal():
    from reclaif.cli import build_parser
    from reclaif.config import DataConfig, TrainConfig, choices

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    bench = {a.dest: a for a in sub["bench"]._actions}
    assert tuple(bench["kernel"].choices) == choices(TrainConfig, "logprob_kernel")
    assert tuple(bench["weight_grad"].choices) == choices(TrainConfig, "logprob_weight_grad")
    prepare = next(a for a in sub["data"]._actions if a.dest == "data_command").choices["prepare"]
    actions = {a.dest: a for a in prepare._actions}
    assert tuple(actions["dataset"].choices) == choices(DataConfig, "dataset") == \
        ("lastfm", "beauty", "esci")
