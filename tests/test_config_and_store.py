"""Config validation, the run store, and what a full disk or an unwritable run dir does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from reclaif.atomic import atomic_write_json, read_jsonl
from reclaif.config import RunConfig, load_config
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
