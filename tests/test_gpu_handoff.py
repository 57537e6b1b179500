"""GPU hand-off between sampling and training, on a real local Ray used as a cluster
(`ray.address` set, as slurm/run.sbatch always sets it): before every training phase, fresh and
on resume, every sampler actor is gone (its process no longer runs) and new weights reach the
samplers as new actors. The trainers are stand-ins that look at Ray's own actor table and the
processes the samplers ran in, then write a checkpoint; sampling and judging are real (a tiny
random Llama, the rubric judge)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import psutil
import pytest

from reclaif.config_load import load_config

pytestmark = pytest.mark.slow

OVERRIDES = ["data.max_train_examples=2", "data.max_eval_examples=2", "ray.shard_size=2",
             "sampling.max_new_tokens=4", "eval.max_new_tokens=4", "dpo.iterations=1",
             "evidence.mode=none", "teacher.kind=offline", "judge.kind=rubric",
             "explainability.kind=rubric", "sft.enabled=true", "launch.mode=inprocess",
             "ray.num_samplers=1", "ray.num_judges=1", "ray.num_cpus=2",
             # fp32, not the quickstart's bf16
             "recommender.dtype=float32", "sft.bf16=false", "dpo.bf16=false"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from reclaif.llm.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _alive_samplers() -> list[str]:
    from ray._private.state import actors

    return [a["ActorID"] for a in actors().values()
            if "SamplerWorker" in a.get("ActorClassName", "") and a.get("State") != "DEAD"]


def _lifecycle(run_dir: Path) -> list[dict]:
    path = run_dir / "lifecycle.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_no_sampler_is_alive_while_a_trainer_runs_fresh_and_resumed(ray_cluster, tiny, tmp_path,
                                                                   monkeypatch):
    import reclaif.pipeline.driver
    import reclaif.train.dpo
    import reclaif.train.sft
    from reclaif.pipeline.driver import Driver
    from reclaif.records import PreferencePair

    run_dir = tmp_path / "run"
    seen: list[dict] = []  # what each trainer found when it started
    crashed = []

    def trainer(stage: str):
        def run(cfg, root, iteration=0):
            sampler_pids = [p["pid"] for e in _lifecycle(run_dir) if e["event"] == "samplers:released"
                            for p in e["processes"]]
            running = [p for p in sampler_pids if psutil.pid_exists(p)
                       and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            seen.append({"stage": stage, "alive_actors": _alive_samplers(), "running": running})
            if stage == "iter-001" and not crashed:
                crashed.append(1)
                raise RuntimeError("trainer killed (the test's crash)")
            shutil.copytree(tiny, Path(root) / stage / "checkpoint", dirs_exist_ok=True)
            return {"loss": 0.69}
        return run

    monkeypatch.setattr(reclaif.train.sft, "run_sft", trainer("sft"))
    monkeypatch.setattr(reclaif.train.dpo, "run_dpo", trainer("iter-001"))
    # The tiny model's answers are noise the rubric judge ties: keep every pair as (a, b).
    monkeypatch.setattr(reclaif.pipeline.driver, "preference_pair",
                        lambda ex, prompt, a, b, v: PreferencePair(ex.id, prompt, a, b))
    cfg = load_config("configs/quickstart.yaml",
                      OVERRIDES + [f"recommender.model={tiny}", f"ray.address={ray_cluster}"])

    with pytest.raises(RuntimeError, match="the test's crash"):
        Driver(cfg, run_dir).run()
    Driver(cfg, run_dir).run()  # resumed: sample, judge and pairs done; DPO again, then eval

    assert [s["stage"] for s in seen] == ["sft", "iter-001", "iter-001"]
    for s in seen:
        assert s["alive_actors"] == [] and s["running"] == [], s

    events = _lifecycle(run_dir)
    order = [(e["event"], e.get("model", e.get("phase", ""))) for e in events]
    sft_ckpt = str(run_dir / "sft" / "checkpoint")
    it1_ckpt = str(run_dir / "iter-001" / "checkpoint")
    assert order == [
        ("samplers:up", str(tiny)),  # base eval
        ("samplers:released", ""), ("train:start", "sft/train"), ("train:end", "sft/train"),
        ("samplers:up", sft_ckpt),  # SFT eval, then iteration 1's sampling on the same weights
        ("samplers:released", ""),  # before the judge
        ("train:start", "iter-001/train"),  # crashed
        ("train:start", "iter-001/train"), ("train:end", "iter-001/train"),  # resumed
        ("samplers:up", it1_ckpt), ("samplers:released", ""),  # iteration 1's eval, end of run
    ]
    # Every sampler process was waited for: each release names the process it saw end.
    released = [e for e in events if e["event"] == "samplers:released"]
    assert all(len(e["processes"]) == 1 for e in released)
    assert len({e["processes"][0]["pid"] for e in released}) == 3  # new weights, new actor
