"""The two-node rehearsal on one machine: a real two-node Ray cluster, the driver attached to it,
and DPO under ZeRO-3 on CPU started by `torchrun --nnodes 2` through the launch template that
slurm/run.sbatch hands the driver.

What runs, all as separate processes:
  1. `ray start --head --port P --num-cpus 1 --temp-dir D/head` and
     `ray start --address 127.0.0.1:P --num-cpus 1 --temp-dir D/worker` (D a short dir under
     /tmp: Ray's AF_UNIX socket paths must stay under 108 bytes, which tmp_path exceeds).
     RAY_AUTH_MODE=disabled, so no token in ~/.ray is read or written. Ray rewrites 127.0.0.1 to
     this machine's own interface address (services.resolve_ip_for_localhost); nothing leaves
     the machine.
  2. `reclaif sample --iteration 1` and `reclaif judge run --iteration 1` with
     ray.address=127.0.0.1:P: two sampler actors (one CPU each, so one per node) and a judge
     actor write their shard files.
  3. The model is build_tiny_model (a random 2-layer Llama): its answers are garbage, so the rubric
     judge ties them all and the judge phase ends with "no preference pair" (asserted). The test
     then writes the pairs itself: for each training prompt, the offline teacher's answer
     (reclaif.teacher.OfflineTeacher) against the first sampled answer, judged by the same rubric
     judge. pairs.jsonl is replaced; the manifest already marks the pairs phase done.
  4. `reclaif run` on the same run directory (the whole driver, attached to the cluster): base
     eval on the Ray samplers, the done phases skipped, then DPO through launch.mode=command with
     the template `python -m reclaif.cli.launcher fill --yaml srun num_machines=2 ...`
     exactly as run.sbatch renders it. `srun` is a link to launch/local_nodes.sh, which starts
     launch/train.sh for node ranks 0 and 1; each renders RECLAIF_LAUNCHER=torchrun
     (`torchrun --nnodes 2 --node_rank K --rdzv_backend static --master_addr 127.0.0.1`) and
     trains with train.engine deepspeed and configs/deepspeed/zero3_cpu.json on gloo. Then eval.
Asserted: 2 alive Ray nodes (ray.nodes()), sampler actors on both nodes, the shard files, world
size 2 in train_metrics.json, both node ranks in the launch log, a finite loss, and a checkpoint
that reloads with transformers.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Ray node check from a separate driver process: node count, then which node each SamplerWorker
# actor (alive or dead) ran on, from the GCS.
NODES = r'''
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
want, deadline = int(sys.argv[2]), time.time() + 90
while sum(n["Alive"] for n in ray.nodes()) < want and time.time() < deadline:
    time.sleep(0.5)
from ray._private.state import actors
placed = sorted({a["Address"]["NodeID"] for a in actors().values()
                 if "SamplerWorker" in a.get("ActorClassName", "")})
print(json.dumps({"alive": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
                  "sampler_nodes": placed}))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], temp_dir: Path, log: Path, env: dict) -> subprocess.Popen:
    ports = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--runtime-env-agent-port"]
    ray = Path(sys.executable).with_name("ray")  # the CLI of the Ray this interpreter imports
    cmd = [str(ray) if ray.exists() else "ray", "start", *args, "--num-cpus", "1",
           "--temp-dir", str(temp_dir),
           "--object-store-memory", str(80 * 2**20), "--disable-usage-stats", "--block",
           *[x for p in ports for x in (p, str(_free_port()))]]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill_tree(procs: list[subprocess.Popen], marks: list[str]) -> None:
    """Every process this test started: the Ray process groups, then any process whose command
    line names one of our private directories (raylet workers, torchrun's workers)."""
    for p in procs:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
    me = os.getpid()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="ignore")
            if int(proc.name) != me and any(m in cmdline for m in marks):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _cli(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "reclaif.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"reclaif {' '.join(args[:2])} ran past {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _ray_tails(tmp_path: Path) -> str:
    """The end of both `ray start --block` logs: they report a Ray process that died."""
    return "".join(f"\n--- {n}:\n" + (tmp_path / n).read_text(errors="ignore")[-1500:]
                   for n in ("ray-head.log", "ray-worker.log") if (tmp_path / n).exists())


def _teacher_pairs(run_dir: Path) -> int:
    """Offline-teacher answer vs the first sampled answer, judged by the run's rubric judge."""
    from reclaif.atomic import atomic_write_jsonl, read_jsonl
    from reclaif.config_load import load_config
    from reclaif.data import load_examples, load_items, resolve_data_dir
    from reclaif.judge import make_judge, preference_pair
    from reclaif.teacher import OfflineTeacher

    cfg = load_config(run_dir / "config.yaml")
    data = resolve_data_dir(cfg.data.path)
    items = load_items(data)
    by_id = {e.id: e for e in load_examples(data, split=cfg.data.train_split)}
    samples = read_jsonl(run_dir / "iter-001" / "samples.jsonl")
    examples = [by_id[s["example_id"]] for s in samples]
    teacher = OfflineTeacher(items, cfg.data.top_k)
    judge = make_judge(cfg.judge, items, cfg.data.top_k)
    good = [teacher.respond(e) for e in examples]
    verdicts = judge.compare_many(examples, [(g, s["answers"][0]) for g, s in zip(good, samples)])
    pairs = [preference_pair(e, s["prompt"], g, s["answers"][0], v)
             for e, s, g, v in zip(examples, samples, good, verdicts)]
    rows = [p.to_json() for p in pairs if p is not None]
    out = run_dir / "iter-001" / "pairs.jsonl"
    atomic_write_jsonl(out, rows)
    # the manifest records what the pairs phase wrote; a replaced file must be recorded anew,
    # or the resumed driver (rightly) redoes the phase
    from reclaif.pipeline.store import RunStore

    RunStore(run_dir).mark_done("iter-001/pairs", [out], count=len(rows))
    return len(rows)


def test_two_node_rehearsal_ray_cluster_and_torchrun_zero3(tmp_path):
    from reclaif.llm.models import build_tiny_model

    t0 = time.monotonic()
    tiny = build_tiny_model(tmp_path / "tiny")
    run_dir = tmp_path / "run"
    ray_dir = Path(tempfile.mkdtemp(prefix="rl2n-", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    try:
        # 1. the cluster: a head, then a second node joining it
        procs.append(_ray_start(["--head", "--port", str(port), "--include-dashboard", "false",
                                 "--ray-client-server-port", str(_free_port())],
                                ray_dir / "head", tmp_path / "ray-head.log", env))
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert procs[0].poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the Ray head did not open its port"
                time.sleep(0.5)
        procs.append(_ray_start(["--address", address], ray_dir / "worker",
                                tmp_path / "ray-worker.log", env))
        check = subprocess.run([sys.executable, "-c", NODES, address, "2"], env=env,
                               capture_output=True, text=True, timeout=150)
        assert check.returncode == 0, check.stderr[-3000:]
        assert len(json.loads(check.stdout.splitlines()[-1])["alive"]) == 2, \
            (check.stdout, (tmp_path / "ray-worker.log").read_text()[-3000:])

        # The launch template exactly as slurm/run.sbatch fills it; `srun` is local_nodes.sh.
        template = subprocess.run(
            [sys.executable, "-m", "reclaif.cli.launcher", "fill", "--yaml", "srun",
             "num_machines=2", f"launch_dir={REPO / 'launch'}"], cwd=REPO, env=env,
            capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "srun").symlink_to(REPO / "launch" / "local_nodes.sh")
        env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", RECLAIF_LAUNCHER="torchrun",
                   NUM_MACHINES="2", GPUS_PER_NODE="1", MAIN_PROCESS_IP="127.0.0.1",
                   MAIN_PROCESS_PORT=str(_free_port()), PYTHON=sys.executable)
        env.pop("SLURM_JOB_ID", None)
        overrides = [
            "evidence.mode=none", f"recommender.model={tiny}", "data.max_train_examples=4", "data.max_eval_examples=2",
            f"ray.address={address}", "ray.num_samplers=2", "ray.num_judges=1",
            "ray.shard_size=2", "sampling.max_new_tokens=16", "eval.max_new_tokens=16",
            "sft.enabled=false", "dpo.iterations=1", "dpo.epochs=1", "dpo.engine=deepspeed",
            "dpo.deepspeed_config=configs/deepspeed/zero3_cpu.json", "dpo.batch_size=1",
            "dpo.max_length=640", "dpo.save_every_steps=0", "launch.mode=command",
            # fp32, not the quickstart's bf16
            "recommender.dtype=float32", "sft.bf16=false", "dpo.bf16=false",
            f"launch.template={template}"]

        # 2. sampling and judging on the cluster
        p = _cli(["sample", "--config", "configs/quickstart.yaml", "--run-dir", str(run_dir),
                  "--iteration", "1", *overrides], env, 240)
        assert p.returncode == 0, p.stderr[-3000:] + _ray_tails(tmp_path)
        it = run_dir / "iter-001"
        assert sorted(f.name for f in (it / "shards").iterdir()
                      if f.suffix == ".jsonl") == ["shard-00000.jsonl", "shard-00001.jsonl"], \
            sorted((it / "shards").iterdir())
        placed = subprocess.run([sys.executable, "-c", NODES, address, "2"], env=env,
                                capture_output=True, text=True, timeout=150)
        assert placed.returncode == 0, placed.stderr[-3000:]
        assert len(json.loads(placed.stdout.splitlines()[-1])["sampler_nodes"]) == 2, placed.stdout

        p = _cli(["judge", "run", "--run-dir", str(run_dir), "--iteration", "1"], env, 240)
        assert list((it / "verdict_shards").glob("shard-*.jsonl")), \
            p.stderr[-3000:] + _ray_tails(tmp_path)
        assert len((it / "verdicts.jsonl").read_text().splitlines()) == 4
        # 3. the tiny random model's answers all tie (see the docstring): pairs from the teacher
        assert p.returncode != 0 and "no preference pair" in p.stderr, p.stderr[-3000:]
        assert _teacher_pairs(run_dir) == 4

        # 4. the whole driver, resuming: base eval, DPO on two torchrun node ranks, eval
        p = _cli(["run", "--run-dir", str(run_dir)], env, 420)
        log = run_dir / "logs" / "train-dpo-001.log"
        assert p.returncode == 0, (p.stderr[-3000:] + _ray_tails(tmp_path)
                                   + (log.read_text()[-4000:] if log.exists() else ""))
    finally:
        _kill_tree(procs, [str(ray_dir), str(run_dir)])
        shutil.rmtree(ray_dir, ignore_errors=True)

    text = log.read_text()
    assert text.startswith("$ srun --overlap --job-name reclaif-train --nodes 2"), text[:300]
    for rank in (0, 1):
        assert f"train.sh: node {rank}/2: torchrun --nnodes 2 --node_rank {rank}" in text, \
            text[-3000:]
    metrics = json.loads((it / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["engine"] == "deepspeed", metrics
    assert metrics["pairs"] == 4 and metrics["steps"] == 2, metrics  # 4 pairs / 2 ranks, batch 1
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["loss_first_step"]), metrics
    phases = json.loads((run_dir / "manifest.json").read_text())["phases"]
    for key in ("base/eval", "iter-001/sample", "iter-001/judge", "iter-001/train",
                "iter-001/eval"):
        assert phases[key]["status"] == "done", key

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(it / "checkpoint", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    w, b = model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    assert w.shape == b.shape and torch.isfinite(w).all() and not torch.equal(w, b)
    print(f"two-node rehearsal: {time.monotonic() - t0:.0f} s")
