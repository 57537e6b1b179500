"""Launch templates: rendering, partial filling, running, and a real two-node torchrun."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reclaif.config import LaunchConfig
from reclaif.config_load import load_config
from reclaif.errors import ConfigError, PhaseError
from reclaif.cli.launcher import main
from reclaif.pipeline.launcher import (TEMPLATES, fill_template, render_launch,
                                       run_launch)

CLUSTER = dict(num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
               main_process_port=29500, num_processes=16, nproc_per_node=8,
               accelerate_config="configs/accelerate/multi_node.yaml")
PHASE = dict(phase="dpo", run_dir="runs/my run", iteration=3)
TRAIN = ["-m", "reclaif.cli", "train", "dpo", "--run-dir", "runs/my run", "--iteration", "3"]


def test_accelerate_template():
    assert render_launch(TEMPLATES["accelerate"], **CLUSTER, **PHASE) == [
        "accelerate", "launch", "--config_file", "configs/accelerate/multi_node.yaml",
        "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1",
        "--main_process_port", "29500", "--num_processes", "16", *TRAIN]


def test_torchrun_template():
    assert render_launch(TEMPLATES["torchrun"], **CLUSTER, **PHASE) == [
        "torchrun", "--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "8",
        "--rdzv_backend", "static", "--master_addr", "10.0.0.1", "--master_port", "29500", *TRAIN]


def test_deepspeed_template():
    assert render_launch(TEMPLATES["deepspeed"], **CLUSTER, **PHASE) == [
        "deepspeed", "--no_ssh", "--num_nodes", "2", "--node_rank", "1", "--num_gpus", "8",
        "--master_addr", "10.0.0.1", "--master_port", "29500", "--module", *TRAIN[1:]]


def test_python_srun_and_node_templates_use_defaults(repo_root):
    assert render_launch(TEMPLATES["python"], **PHASE) == [sys.executable, *TRAIN]
    train_sh = str(repo_root / "launch" / "train.sh")
    assert render_launch(TEMPLATES["node"], **PHASE) == [train_sh, "dpo", "runs/my run", "3"]
    assert render_launch(TEMPLATES["srun"], num_machines=4, **PHASE) == [
        "srun", "--overlap", "--job-name", "reclaif-train", "--nodes", "4",
        "--ntasks-per-node", "1", "--kill-on-bad-exit=1", train_sh, "dpo", "runs/my run", "3"]


def test_driver_values_fill_the_config_default_template():
    argv = render_launch(LaunchConfig().template, phase="sft", run_dir="r", iteration=0,
                         config="r/config.yaml")
    assert argv[:2] == ["accelerate", "launch"] and argv[-5:] == ["sft", "--run-dir", "r",
                                                                   "--iteration", "0"]


def test_unknown_placeholder_is_named():
    with pytest.raises(ConfigError, match=r"\{nodes\}"):
        render_launch("torchrun --nnodes {nodes} x", phase="sft")
    with pytest.raises(ConfigError, match=r"\{phase:>3\}"):
        render_launch("x {phase:>3}", phase="sft")
    with pytest.raises(ConfigError, match="gpus"):
        render_launch(TEMPLATES["python"], gpus=8, **PHASE)


def test_missing_value_is_named():
    with pytest.raises(ConfigError, match=r"\{machine_rank\}"):
        render_launch(TEMPLATES["torchrun"], **{**CLUSTER, "machine_rank": None}, **PHASE)


def test_values_are_never_split_or_expanded():
    argv = render_launch("echo {run_dir} {{literal}}", run_dir="a b; rm -rf {phase}")
    assert argv == ["echo", "a b; rm -rf {phase}", "{literal}"]


def test_fill_then_render_equals_render():
    partial = fill_template(TEMPLATES["srun"], num_machines=2, launch_dir="/opt/my repo/launch")
    assert "{phase}" in partial and "{num_machines}" not in partial
    assert render_launch(partial, **PHASE) == render_launch(
        TEMPLATES["srun"], num_machines=2, launch_dir="/opt/my repo/launch", **PHASE)


def test_fill_yaml_survives_a_config_override(capsys):
    assert main(["fill", "--yaml", "srun", "num_machines=2", "launch_dir=/x"]) == 0
    text = capsys.readouterr().out.strip()
    cfg = load_config(None, ["launch.mode=command", f"launch.template={text}"])
    assert cfg.launch.template == fill_template(TEMPLATES["srun"], num_machines=2, launch_dir="/x")


def test_mistral_configs_use_the_accelerate_template(repo_root):
    expected = fill_template(TEMPLATES["accelerate"], num_machines=1, machine_rank=0,
                             main_process_ip="127.0.0.1", main_process_port=29500,
                             num_processes=8,
                             accelerate_config="configs/accelerate/single_node.yaml")
    for path in sorted((repo_root / "configs").glob("mistral-7b-*.yaml")):
        assert load_config(path).launch.template == expected, path


def test_render_cli_null_separated(capsys):
    assert main(["render", "--null", "torchrun", *(f"{k}={v}" for k, v in CLUSTER.items()),
                 *(f"{k}={v}" for k, v in PHASE.items())]) == 0
    assert capsys.readouterr().out.split("\0")[:-1] == render_launch(
        TEMPLATES["torchrun"], **CLUSTER, **PHASE)
    assert main(["render", "nosuch"]) == 2


def test_run_launch_logs_and_returns_zero(tmp_path):
    log = tmp_path / "logs" / "train.log"
    rc = run_launch([sys.executable, "-c", "import os; print('hi', os.environ['X'])"], log,
                    env={"X": "42"})
    assert rc == 0 and "hi 42" in log.read_text()


def test_run_launch_failure_names_the_log(tmp_path):
    log = tmp_path / "train.log"
    with pytest.raises(PhaseError, match="code 3.*train.log"):
        run_launch([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], log)
    assert "boom" in log.read_text()
    with pytest.raises(PhaseError, match="cannot start.*train.log"):
        run_launch(["/nonexistent/launcher"], log)
    t0 = time.monotonic()
    with pytest.raises(PhaseError, match="past 0.5 s.*train.log"):
        run_launch(["sleep", "30"], log, timeout=0.5)
    assert time.monotonic() - t0 < 20



def _fake_cli_main(fake: Path, repo_root: Path, code: str) -> None:
    """A `reclaif` package whose `python -m reclaif.cli` runs `code` instead of a trainer, while
    every other module (the launch templates' `reclaif.cli.launcher` among them) is the real one."""
    (fake / "__init__.py").write_text(f"__path__.append({str(repo_root / 'reclaif')!r})\n")
    (fake / "cli").mkdir()
    (fake / "cli" / "__init__.py").write_text(
        f"__path__.append({str(repo_root / 'reclaif' / 'cli')!r})\n")
    (fake / "cli" / "__main__.py").write_text(code)

FAKE_CLI = '''
import json, os, signal, sys, time
out, rank = os.environ["FAKE_OUT"], os.environ["RANK"]
def checkpoint(*_):  # the trainer's contract: checkpoint, exit 0
    open(os.path.join(out, "ckpt-" + rank), "w").write("saved")
    sys.exit(0)
signal.signal(signal.SIGUSR1, checkpoint)
keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR"]
with open(os.path.join(out, "rank-" + rank + ".json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}, f)
time.sleep(300)
'''


def _tree(pid: int) -> list[int]:
    """pid and all its descendants: what Slurm's proctrack/cgroup signals for a step (torch's
    agent starts each worker in a session of its own, so a process group is not enough)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _signal_tree(pid: int, sig: int) -> None:
    for p in _tree(pid):
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_torchrun_on_localhost_and_sigusr1_checkpoints(tmp_path, repo_root):
    """launch/train.sh renders TEMPLATES['torchrun'] for 2 nodes on 127.0.0.1; a SIGUSR1 to
    every process (what Slurm does to a step) reaches the trainers, not the elastic agents."""
    fake = tmp_path / "fake" / "reclaif"
    fake.mkdir(parents=True)
    _fake_cli_main(fake, repo_root, FAKE_CLI)
    out = tmp_path / "out"
    out.mkdir()
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "PYTHONPATH": str(fake.parent), "FAKE_OUT": str(out),
               "RECLAIF_LAUNCHER": "torchrun", "NUM_MACHINES": "2", "MACHINE_RANK": str(rank),
               "GPUS_PER_NODE": "1", "MAIN_PROCESS_IP": "127.0.0.1",
               "MAIN_PROCESS_PORT": str(port), "PYTHON": sys.executable}
        env.pop("SLURM_JOB_ID", None)
        procs.append(subprocess.Popen(
            ["bash", str(repo_root / "launch" / "train.sh"), "dpo", str(tmp_path / "run"), "2"],
            env=env, cwd=tmp_path, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 150
        while len(list(out.glob("rank-*.json"))) < 2:
            tree.update(q for p in procs for q in _tree(p.pid))
            assert time.monotonic() < deadline, [p.poll() for p in procs]
            assert all(p.poll() is None for p in procs), procs[0].communicate()[0]
            time.sleep(0.5)
        for p in procs:
            _signal_tree(p.pid, signal.SIGUSR1)
        logs = [p.communicate(timeout=60)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], logs
    finally:  # never leave a worker behind, even one whose launcher already died
        for pid in tree | {q for p in procs for q in _tree(p.pid)}:
            try:
                if str(tmp_path) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    seen = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [s["env"]["GROUP_RANK"] for s in seen] == ["0", "1"]
    assert all(s["env"]["WORLD_SIZE"] == "2" and s["env"]["MASTER_ADDR"] == "127.0.0.1"
               for s in seen)
    assert seen[0]["argv"] == ["train", "dpo", "--run-dir", str(tmp_path / "run"),
                               "--iteration", "2"]
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-0", "ckpt-1"]


def test_accelerate_template_starts_two_cpu_processes(tmp_path, repo_root, monkeypatch):
    """TEMPLATES['accelerate'] with configs/accelerate/cpu_two_procs.yaml: two ranks on CPU."""
    monkeypatch.chdir(tmp_path)  # `-m` puts the cwd first on sys.path: keep the fake cli first
    fake = tmp_path / "fake" / "reclaif"
    fake.mkdir(parents=True)
    # one write per rank: print's separate writes of each argument interleave between the two
    # ranks when stdout is unbuffered (PYTHONUNBUFFERED=1), as a CI run showed
    _fake_cli_main(fake, repo_root, "import json, os, sys\nsys.stdout.write(' '.join(['RANK=' + "
                                    "os.environ['RANK'], os.environ['WORLD_SIZE'], "
                                    "json.dumps(sys.argv[1:])]) + '\\n')\n")
    argv = render_launch(TEMPLATES["accelerate"], num_machines=1, machine_rank=0,
                         main_process_ip="127.0.0.1", main_process_port=_free_port(),
                         num_processes=2, phase="sft", run_dir="runs/r", iteration=0,
                         accelerate_config=str(repo_root / "configs/accelerate/cpu_two_procs.yaml"))
    log = tmp_path / "train.log"
    run_launch(argv, log, env={"PYTHONPATH": str(fake.parent)}, timeout=240)
    text = log.read_text()
    args = '["train", "sft", "--run-dir", "runs/r", "--iteration", "0"]'
    assert f"RANK=0 2 {args}" in text and f"RANK=1 2 {args}" in text, text


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "configs")
                                        .glob("*.yaml")))
def test_every_run_config_loads(repo_root, name):
    load_config(repo_root / "configs" / name)


def test_mistral_configs_carry_the_papers_settings(repo_root):
    for ds, top_k in (("esci", 5), ("beauty", 3), ("lastfm", 3)):
        c = load_config(repo_root / "configs" / f"mistral-7b-{ds}.yaml")
        assert (c.data.dataset, c.data.top_k, c.dpo.iterations) == (ds, top_k, 4)
        assert c.recommender.model == "mistralai/Mistral-7B-Instruct-v0.2"
        assert (c.recommender.backend, c.recommender.attn_implementation) == (
            "vllm", "flash_attention_2")
        for llm in (c.teacher.llm, c.judge.llm, c.explainability.llm):
            assert (llm.backend, llm.model) == ("bedrock", "anthropic.claude-3-sonnet-20240229-v1:0")
        assert (c.teacher.kind, c.judge.kind, c.explainability.kind) == ("llm", "llm", "llm")
        assert c.sampling.temperature > 1.0 and c.launch.mode == "command"
        for t in (c.sft, c.dpo):
            assert (t.engine, t.deepspeed_config, t.bf16, t.lora_r) == (
                "deepspeed", "configs/deepspeed/zero3.json", True, 0)


def test_accelerate_configs_load_with_accelerate(repo_root):
    from accelerate.commands.config.config_args import load_config_from_file

    single = load_config_from_file(str(repo_root / "configs/accelerate/single_node.yaml"))
    multi = load_config_from_file(str(repo_root / "configs/accelerate/multi_node.yaml"))
    cpu = load_config_from_file(str(repo_root / "configs/accelerate/cpu_two_procs.yaml"))
    for c in (single, multi):
        assert c.distributed_type == "DEEPSPEED" and c.mixed_precision == "bf16"
        ds_file = repo_root / c.deepspeed_config["deepspeed_config_file"]
        assert ds_file.exists(), ds_file
    assert multi.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
    assert (cpu.distributed_type, cpu.num_processes, cpu.mixed_precision) == ("MULTI_GPU", 2, "no")


def _fill_autos(cfg: dict) -> dict:
    """What the trainer does (configs/deepspeed/README.md) before deepspeed.initialize."""
    cfg["optimizer"]["params"].update(lr=1e-5, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0)
    if "bf16" in cfg:
        cfg["bf16"]["enabled"] = True
    cfg.update(gradient_clipping=1.0, train_micro_batch_size_per_gpu=2,
               gradient_accumulation_steps=4, train_batch_size=8)
    z = cfg["zero_optimization"]
    z.update(reduce_bucket_size=4096**2, stage3_prefetch_bucket_size=int(0.9 * 4096**2),
             stage3_param_persistence_threshold=10 * 4096)
    return cfg


def test_deepspeed_configs_are_valid_once_autos_are_filled(repo_root):
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        from deepspeed.runtime.config import DeepSpeedConfig

    def auto_keys(node, prefix=""):
        if isinstance(node, dict):
            return [k for key, v in node.items() for k in auto_keys(v, f"{prefix}{key}.")]
        return [prefix[:-1]] if node == "auto" else []

    readme = (repo_root / "configs/deepspeed/README.md").read_text()
    parsed = {}
    for name in ("zero3", "zero3_offload", "zero3_cpu"):
        raw = json.loads((repo_root / f"configs/deepspeed/{name}.json").read_text())
        for key in auto_keys(raw):
            assert f"`{key}`" in readme, f"{name}.json: '{key}' is auto but not documented"
        parsed[name] = DeepSpeedConfig(_fill_autos(raw))
    for c in parsed.values():
        assert c.zero_optimization_stage == 3 and c.zero_config.gather_16bit_weights_on_model_save
    assert parsed["zero3"].bfloat16_config.enabled and not parsed["zero3_cpu"].bfloat16_config.enabled
    assert parsed["zero3"].zero_config.offload_optimizer is None
    off = parsed["zero3_offload"].zero_config
    assert off.offload_optimizer.device == "cpu" and off.offload_param.device == "cpu"
