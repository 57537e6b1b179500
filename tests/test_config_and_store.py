"""Config validation, the run store, and what a full disk or an unwritable run dir does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from reclaif.atomic import atomic_write_json, read_jsonl
from reclaif.config import RunConfig
from reclaif.config_load import load_config
from reclaif.errors import ConfigError, DataError
from reclaif.pipeline.store import RunStore


def test_unknown_key_is_named_with_its_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("dpo:\n  betta: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'dpo.betta'"):
        load_config(f)


def test_wrong_type_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sampling:\n  temperature: hot\n")
    with pytest.raises(ConfigError, match=r"sampling.temperature: expected a number"):
        load_config(f)


def test_bad_choice_and_override_are_named():
    with pytest.raises(ConfigError, match="judge.kind"):
        load_config(None, ["judge.kind=oracle"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["dpo.beta"])
    assert load_config(None, ["dpo.beta=0.3"]).dpo.beta == 0.3
    with pytest.raises(ConfigError, match="dpo.logprob_kernel: 'cuda'"):
        load_config(None, ["dpo.logprob_kernel=cuda"])
    assert load_config(None, ["sft.logprob_kernel=torch"]).sft.logprob_kernel == "torch"


def test_every_shipped_config_validates(repo_root):
    for f in sorted((repo_root / "configs").glob("*.yaml")):
        assert isinstance(load_config(f), RunConfig), f


def test_frozen_config_refuses_a_different_one(tmp_path):
    store = RunStore(tmp_path / "run")
    store.freeze_config(load_config(None))
    assert store.freeze_config(load_config(None)).dpo.beta == 0.1
    with pytest.raises(ConfigError, match=r"dpo.beta: 0.1 → 0.5"):
        store.freeze_config(load_config(None, ["dpo.beta=0.5"]))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"x.jsonl:2: not valid JSON"):
        read_jsonl(f)


def test_unwritable_run_dir_keeps_previous_state(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits, so use a read-only bind the kernel enforces for root too:
        # a path whose parent is a file cannot be created by anyone.
        target = tmp_path / "not-a-dir" / "manifest.json"
        (tmp_path / "not-a-dir").write_text("a file")
        with pytest.raises(OSError):
            atomic_write_json(target, {"x": 1})
        assert (tmp_path / "not-a-dir").read_text() == "a file"
    else:
        d = tmp_path / "ro"
        d.mkdir()
        atomic_write_json(d / "m.json", {"v": 1})
        d.chmod(0o500)
        with pytest.raises(OSError):
            atomic_write_json(d / "m.json", {"v": 2})
        assert json.loads((d / "m.json").read_text()) == {"v": 1}


def test_full_disk_leaves_the_old_file_and_a_clear_cli_error(tmp_path, real_data):
    """RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), as a full disk would."""
    manifest = tmp_path / "run" / "manifest.json"
    atomic_write_json(manifest, {"phases": {"base/eval": {"status": "done"}}})
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        from reclaif.pipeline.store import RunStore
        RunStore({str(tmp_path / 'run')!r}).mark_done("sft/train", note="x" * 500)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "File too large" in p.stderr
    assert json.loads(manifest.read_text()) == {"phases": {"base/eval": {"status": "done"}}}
    assert not [f for f in manifest.parent.iterdir() if f.name.endswith(".tmp")]

    script_cli = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        from reclaif.cli import main
        sys.exit(main(["data", "prepare", "--dataset", "lastfm", "--limit", "5",
                       "--source", {str(real_data / 'lastfm/sdpo/lastfm-val.json')!r},
                       "--items", {str(real_data / 'lastfm/hetrec2011-lastfm-2k')!r},
                       "--out", {str(tmp_path / 'out')!r}]))
    """)
    p = subprocess.run([sys.executable, "-c", script_cli], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "cannot write" in p.stderr and "File too large" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "examples.jsonl").exists()


def test_sampling_prompts_take_the_next_slice_each_iteration(tmp_path):
    from reclaif.pipeline.driver import Driver

    cfg = load_config(None, ["data.max_train_examples=5", "sampling.max_prompts=2"])
    driver = Driver(cfg, tmp_path / "run")
    ids = [e.id for e in driver.train]
    assert len(ids) == 5
    assert [[e.id for e in driver.sampling_prompts(i)] for i in (1, 2, 3)] == [
        ids[0:2], ids[2:4], [ids[4], ids[0]]]
    every = Driver(load_config(None, ["data.max_train_examples=5"]), tmp_path / "all")
    assert [e.id for e in every.sampling_prompts(2)] == ids
    with pytest.raises(ConfigError, match="sampling.max_prompts"):
        load_config(None, ["sampling.max_prompts=-1"])



def test_runs_from_another_runs_sft_checkpoint_sample_its_fresh_prompts_alike(tmp_path):
    # docs/RESULTS.md's S-DPO comparison: one SFT run, then two arms (pairwise N = 2, S-DPO
    # N = 4) with sft.enabled=false starting from its checkpoint. Both must sample the prompts
    # the SFT run's own iterations would (the proof run's), none its SFT trained on.
    from reclaif.pipeline.driver import Driver

    common = ["data.max_train_examples=7", "sampling.max_prompts=2", "sft.max_examples=3",
              "evidence.mode=none", "data.max_eval_examples=2"]
    sft = Driver(load_config(None, common), tmp_path / "sft")
    sft.teacher_data()
    taught = {r["id"] for r in read_jsonl(sft.store.teacher())}
    assert taught == {e.id for e in sft.train[:3]}
    start = [*common, "sft.enabled=false", f"recommender.model={tmp_path / 'sft/sft/checkpoint'}"]
    arms = [Driver(load_config(None, start), tmp_path / "pairwise"),
            Driver(load_config(None, [*start, "sampling.num_samples=4", "dpo.loss_type=sdpo"]),
                   tmp_path / "sdpo")]
    for i in (1, 2):
        want = [e.id for e in sft.sampling_prompts(i)]
        assert len(want) == 2 and not taught & set(want), i
        assert [[e.id for e in arm.sampling_prompts(i)] for arm in arms] == [want, want], i
    assert [e.id for e in arms[0].sampling_prompts(3)] == [sft.train[i].id for i in (0, 1)]
    assert [e.id for e in arms[0].eval] == [e.id for e in arms[1].eval] == [e.id for e in sft.eval]

# ------------------------------------------------------------- hostile and careless configs
def test_a_billion_laughs_config_is_refused_fast_and_small(tmp_path):
    import resource
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    f = tmp_path / "bomb.yaml"
    f.write_text("\n".join(lines) + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml: more than 100,000 values"):
        load_config(f)
    assert time.perf_counter() - t0 < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB


def test_an_override_alias_bomb_is_refused_too():
    level = "[" + ", ".join(["x"] * 10) + "]"
    for i in range(6):
        level = f"[&l{i} {level}, " + ", ".join([f"*l{i}"] * 9) + "]"
    with pytest.raises(ConfigError, match=r"override 'report.trackers': more than 100,000"):
        load_config(None, [f"report.trackers={level}"])


def test_shipped_configs_with_aliases_still_load(repo_root):
    cfg = load_config(repo_root / "configs/mistral-7b-lastfm.yaml")
    assert cfg.judge.llm.backend == cfg.teacher.llm.backend


def test_a_non_utf8_config_names_the_file_and_byte(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_config(f)


@pytest.mark.parametrize("override", [
    "dpo.iterations=-1", "dpo.lr=0", "dpo.lr=-1e-5", "sft.lr=.nan", "dpo.beta=0", "dpo.beta=.nan",
    "dpo.beta=-0.1", "sft.batch_size=0", "dpo.batch_size=-2", "dpo.grad_accum=0",
    "recommender.timeout_s=0", "judge.llm.timeout_s=-3", "judge.llm.timeout_s=.inf",
    "eval.k=[]", "eval.k=[0, 3]", "data.max_eval_examples=-1", "data.max_train_examples=-5",
    "ray.num_cpus=0", "ray.max_in_flight=0", "ray.shard_size=0", "ray.num_samplers=0",
    "sampling.temperature=-1", "sampling.max_new_tokens=0", "sft.epochs=0",
    "sft.warmup_ratio=1.5", "dpo.label_smoothing=0.5", "judge.weights=[1, .nan, 1]",
    "recommender.max_concurrency=0", "sft.logprob_chunk=0", "ray.release_timeout_s=-5",
    "ray.release_timeout_s=0", "dpo.collective_timeout_s=0", "sft.collective_timeout_s=-1",
    "recommender.dtype=fp8", "judge.llm.dtype=half", "evidence.sasrec_epochs=0",
    "evidence.sasrec_max_seconds=-1"])
def test_out_of_range_values_are_named(override):
    key = override.split("=")[0].split("[")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("n", [0, 1, 9])
def test_num_samples_outside_two_to_eight_is_refused(n):
    # One answer leaves the judge nothing to compare; 2 is a pair, 3 to 8 a ranked group.
    with pytest.raises(ConfigError, match=rf"sampling\.num_samples: {n} must be in \[2, 8\]"):
        load_config(None, [f"sampling.num_samples={n}"])
    for n in (2, 3, 8):
        assert load_config(None, [f"sampling.num_samples={n}"]).sampling.num_samples == n


@pytest.mark.parametrize("override, message", [
    ("dpo.prompt_forward=separate", r"dpo\.prompt_forward: 'separate' with dpo\.loss_type sdpo"),
    ("recommender.attn_implementation=flash_attention_2", "takes no 4D attention mask"),
    ("dpo.label_smoothing=0.1", "cDPO applies to the sigmoid loss only")])
def test_sdpo_refuses_what_cannot_pack_a_group_or_is_pairwise_only(override, message):
    # S-DPO runs each group as one row under a 4D mask; label smoothing is cDPO's, pairwise.
    load_config(None, [override])  # each is fine with the pairwise sigmoid loss
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["dpo.loss_type=sdpo", override])


def test_a_frozen_config_with_the_retired_data_seed_still_loads(tmp_path):
    from reclaif.atomic import atomic_write_text
    from reclaif.config_load import dump_config

    text = dump_config(load_config(None, [])).replace("data:\n", "data:\n  seed: 7\n")
    assert "seed: 7" in text
    atomic_write_text(tmp_path / "config.yaml", text)
    assert not hasattr(load_config(tmp_path / "config.yaml").data, "seed")


def test_more_actors_than_local_ray_cpus_is_refused_not_a_silent_hang():
    for key in ("ray.num_samplers", "ray.num_judges"):
        with pytest.raises(ConfigError, match=rf"{key}: 3 actors .* ray.num_cpus=2"):
            load_config(None, ["ray.num_cpus=2", f"{key}=3"])
        # A cluster's CPUs are its own: the driver's ray.num_cpus does not bound them.
        assert load_config(None, ["ray.address=auto", "ray.num_cpus=2", f"{key}=3"])


def test_lora_alpha_must_be_positive_only_when_lora_is_on():
    with pytest.raises(ConfigError, match=r"sft\.lora_alpha: 0 must be at least 1"):
        load_config(None, ["sft.lora_r=4", "sft.lora_alpha=0"])
    assert load_config(None, ["sft.lora_r=0", "sft.lora_alpha=0"]).sft.lora_alpha == 0


def test_edge_values_that_mean_off_are_accepted():
    cfg = load_config(None, ["dpo.iterations=0", "data.max_eval_examples=0", "sft.lora_r=0",
                             "dpo.save_every_steps=0", "sampling.temperature=0", "eval.k=[1]"])
    assert cfg.dpo.iterations == 0 and cfg.eval.k == [1]


def test_full_disk_while_saving_a_checkpoint_is_an_oserror_not_a_safetensor_error(tmp_path):
    """safetensors says SafetensorError("... (os error 27)"); the CLI's one-line handler knows
    OSError. The previous checkpoint stays whole and no temporary directory is left."""
    from reclaif.llm.models import build_tiny_model

    src = build_tiny_model(tmp_path / "src")
    out = tmp_path / "run/sft/checkpoint"
    build_tiny_model(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    script = textwrap.dedent(f"""
        import errno, resource, signal, sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from reclaif.train.checkpoint import save_hf_checkpoint
        model = AutoModelForCausalLM.from_pretrained({str(src)!r})
        tok = AutoTokenizer.from_pretrained({str(src)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            save_hf_checkpoint(model, tok, {str(out)!r}, is_main=True)
        except OSError as e:
            print("OSError", errno.errorcode[e.errno], e.filename)
            sys.exit(0)
        sys.exit(3)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"OSError EFBIG {out}" in p.stdout
    assert {q.name: q.read_bytes() for q in out.iterdir()} == before
    assert [q.name for q in out.parent.iterdir()] == ["checkpoint"]


def test_eval_baselines_takes_rankers_not_llms():
    assert load_config(None, ["eval.baselines=[sasrec-bce]"]).eval.baselines == ["sasrec-bce"]
    with pytest.raises(ConfigError, match=r"eval.baselines: 'model:runs/x' is an LLM"):
        load_config(None, ["eval.baselines=[model:runs/x]"])
