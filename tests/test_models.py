"""Model resolution: the embedded default (converted once, cached), checkpoint checks, no remote code."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from reclaif.config import LLMSpec
from reclaif.errors import CheckpointError
from reclaif.llm import models


def test_default_model_is_converted_once_then_reused(monkeypatch, caplog):
    t0 = time.perf_counter()
    first = models.default_model_dir()  # converts here if no earlier test or run did
    convert_or_hit_s = time.perf_counter() - t0

    def no_reconversion(*a, **k):
        raise AssertionError("the cached conversion was not reused")

    monkeypatch.setattr(models, "_convert_gguf", no_reconversion)
    t0 = time.perf_counter()
    assert models.default_model_dir() == first
    cached_s = time.perf_counter() - t0
    assert models.resolve_model("default") == str(first)
    assert list(first.glob("*.safetensors")) and not list(first.glob("*.bin"))
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    logging.getLogger(__name__).info("default model dir %.1f s, cached %.2f s",
                                     convert_or_hit_s, cached_s)


def test_cached_default_model_loads_and_is_tied():
    t0 = time.perf_counter()
    model = models.load_causal_lm("default", device="cpu")
    load_s = time.perf_counter() - t0
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.get_output_embeddings().weight.data_ptr() == \
        model.get_input_embeddings().weight.data_ptr()
    logging.getLogger(__name__).info("cached load %.2f s", load_s)


def test_checkpoint_without_config_is_refused(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{tmp_path}.*no config.json"):
        models.check_checkpoint_dir(tmp_path)


def test_checkpoint_without_safetensors_is_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{tmp_path}.*safetensors"):
        models.check_checkpoint_dir(tmp_path)


def test_missing_local_path_is_refused_not_sent_to_a_hub(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not a directory"):
        models.resolve_model(str(tmp_path / "runs" / "iter-002" / "checkpoint"))


def test_hub_names_pass_through_unchanged():
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_remote_code_is_never_run_by_default(tmp_path: Path):
    assert LLMSpec().trust_remote_code is False
    ckpt = models.build_tiny_model(tmp_path / "ckpt")
    marker = tmp_path / "remote-code-ran"
    (ckpt / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaForCausalLM\n"
        "class EvilModel(LlamaForCausalLM):\n    pass\n")
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (ckpt / "config.json").write_text(json.dumps(config))
    try:
        model = models.load_causal_lm(str(ckpt), device="cpu")
        assert type(model).__name__ == "LlamaForCausalLM"
    except ValueError as e:  # transformers may refuse outright instead of ignoring auto_map
        assert "trust_remote_code" in str(e)
    assert not marker.exists()


def test_pick_helpers_on_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx2", "fma"})
    assert models.pick_device("auto") in ("cpu", "cuda")
    assert models.pick_dtype("auto", "cpu") is torch.float32
    assert models.pick_dtype("bfloat16", "cuda") is torch.bfloat16
    assert models.pick_attn("auto", "cpu") == "sdpa"
    assert models.pick_attn("eager", "cuda") == "eager"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return models.build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["cut", "garbled", "empty"])
def test_a_damaged_safetensors_file_is_one_line_naming_it(tiny_dir, tmp_path, damage):
    d = _copy(tiny_dir, tmp_path / "ckpt")
    f = next(d.glob("*.safetensors"))
    data = f.read_bytes()
    f.write_bytes({"cut": data[: len(data) // 2], "garbled": data[:8] + b"{not json" + data[17:],
                   "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=f"{f}: .*damaged"):
        models.check_checkpoint_dir(d)
    with pytest.raises(CheckpointError, match=f"{f}: "):
        models.load_causal_lm(str(d), device="cpu")
    assert models.safetensors_damage(next(tiny_dir.glob("*.safetensors"))) is None


def test_a_checkpoint_without_its_tokenizer_is_one_line(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "ckpt")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
              "special_tokens_map.json"):
        (d / f).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=f"{d}: no usable tokenizer"):
        models.load_tokenizer(str(d))


@pytest.mark.parametrize("flags, want", [({"avx2", "fma"}, "float32"),
                                         ({"avx512f", "avx512bw"}, "float32"),
                                         ({"avx512f", "avx512_bf16"}, "bfloat16"),
                                         ({"amx_tile", "amx_bf16"}, "bfloat16")])
def test_auto_dtype_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, flags, want):
    import torch

    monkeypatch.setattr(models, "cpu_flags", lambda: flags)
    assert models.pick_dtype("auto", "cpu") is getattr(torch, want)
    assert models.pick_dtype("float32", "cpu") is torch.float32  # an explicit dtype stays


@pytest.mark.parametrize("supported, want", [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_on_cuda_follows_the_gpus_bf16_support(monkeypatch, supported, want):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert models.pick_dtype("auto", "cuda") is getattr(torch, want)


def test_cpu_flags_reads_this_machines_cpuinfo():
    flags = models.cpu_flags()
    assert not flags or "fpu" in flags  # x86 and most CPUs list fpu; unreadable gives empty
