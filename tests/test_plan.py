"""`reclaif plan`: parameter counts, DeepSpeed's estimator, activations, fit verdict, CLI."""
from __future__ import annotations

import json

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

from reclaif.config_load import load_config
from reclaif.errors import ConfigError
from reclaif.plan import (GIB, Assumptions, activation_bytes, format_plan, model_shape, plan)


@pytest.fixture(scope="module")
def mistral_cfg(repo_root):
    return load_config(repo_root / "configs" / "mistral-7b-beauty.yaml")


def test_mistral_7b_param_count_matches_transformers_meta_model():
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                        vocab_size=32000, num_attention_heads=32, num_key_value_heads=8)
    with torch.device("meta"):
        model = MistralForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    shape = model_shape("mistralai/Mistral-7B-Instruct-v0.2")
    assert shape.total_params() == total == 7_241_732_096
    assert shape.largest_layer_params() == largest


def test_local_hf_dir_counts_like_deepspeed_model_to_params(tmp_path):
    """A tiny real (tied, GQA) Llama saved to disk: counts from its config.json."""
    from deepspeed.runtime.zero.stage3 import model_to_params
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=176, vocab_size=500,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    cfg.save_pretrained(tmp_path)
    shape = model_shape(str(tmp_path))
    assert (shape.total_params(), shape.largest_layer_params()) == model_to_params(model)


def test_default_model_is_smollm2_135m():
    assert model_shape("default").total_params() == 134_515_008


def test_unknown_model_names_the_key():
    with pytest.raises(ConfigError, match="recommender.model"):
        model_shape("someone/unknown-13b")


@pytest.mark.parametrize("gpus,nodes", [(8, 1), (8, 2), (4, 1)])
def test_model_states_are_deepspeeds_estimate(mistral_cfg, gpus, nodes):
    shape = model_shape(mistral_cfg.recommender.model)
    _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
        total_params=shape.total_params(), largest_layer_params=shape.largest_layer_params(),
        num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=False, cpu_offload_params=False)
    p = plan(mistral_cfg, gpus, nodes)
    assert p["memory"]["dpo"]["model_states_gib"] == pytest.approx(gpu_bytes / GIB)
    assert p["memory"]["dpo"]["zero"]["stage"] == 3


def test_offload_config_uses_the_offload_estimate(repo_root):
    cfg = load_config(repo_root / "configs" / "mistral-7b-beauty.yaml",
                      ["dpo.deepspeed_config=configs/deepspeed/zero3_offload.json"])
    shape = model_shape(cfg.recommender.model)
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
        shape.total_params(), shape.largest_layer_params(), 8, 1,
        cpu_offload=True, cpu_offload_params=True)
    m = plan(cfg, 8, 1)["memory"]["dpo"]
    assert m["model_states_gib"] == pytest.approx(gpu / GIB)
    assert m["cpu_per_node_gib"] == pytest.approx(cpu / GIB)


def test_checkpointing_keeps_only_layer_inputs_plus_one_layer():
    s = model_shape("mistralai/Mistral-7B-Instruct-v0.2")
    full = activation_bytes(s, 4, 1024, False, "flash_attention_2", True)
    ckpt = activation_bytes(s, 4, 1024, True, "flash_attention_2", True)
    t = 4 * 1024
    assert ckpt == s.layers * 2 * t * s.hidden + full // s.layers
    # eager attention adds the s^2 softmax; fp32 doubles everything
    assert activation_bytes(s, 4, 1024, False, "eager", True) > full
    assert activation_bytes(s, 4, 1024, False, "flash_attention_2", False) == 2 * full


def test_small_gpu_does_not_fit(mistral_cfg):
    p = plan(mistral_cfg, 1, 1, gpu_memory_gb=24)
    assert not p["memory"]["dpo"]["fits"]
    assert "does not fit" in format_plan(p)
    assert plan(mistral_cfg, 8, 1, gpu_memory_gb=80)["memory"]["dpo"]["fits"]


def test_more_gpus_shorten_training(mistral_cfg):
    one, two = plan(mistral_cfg, 8, 1), plan(mistral_cfg, 8, 2)
    assert two["iteration"]["train"]["seconds"] == pytest.approx(
        one["iteration"]["train"]["seconds"] / 2)


def test_training_time_is_6_n_tokens_at_the_assumed_mfu(mistral_cfg):
    a = Assumptions(prompts=100, prompt_tokens=500, peak_tflops=1000.0, mfu=0.5)
    p = plan(mistral_cfg, 8, 1, assumptions=a)
    seq = min(500 + mistral_cfg.sampling.max_new_tokens, mistral_cfg.dpo.max_length)
    flops = 6 * p["params"] * 100 * 2 * seq * (8 / 6)  # gradient checkpointing recomputes
    assert p["iteration"]["train"]["seconds"] == pytest.approx(flops / (8 * 1000e12 * 0.5))


def test_bf16_weight_gradient_accumulator_is_counted_when_a_batch_spans_chunks(mistral_cfg):
    import dataclasses

    # DPO micro-batch: 4 sequences x 2048 tokens, chunk 1024: 8 chunks, so the fp32
    # [32000, 4096] accumulator is held; summing in the weight's dtype holds none.
    assert mistral_cfg.dpo.bf16 and mistral_cfg.dpo.logprob_chunk < 4 * 2048
    param = dataclasses.replace(mistral_cfg, dpo=dataclasses.replace(
        mistral_cfg.dpo, logprob_weight_grad="param"))
    fp32 = plan(mistral_cfg, 8, 1)["memory"]["dpo"]["logits_gib"]
    assert fp32 - plan(param, 8, 1)["memory"]["dpo"]["logits_gib"] == pytest.approx(
        32000 * 4096 * 4 / GIB)


def test_cli_prints_table_and_json(repo_root, capsys):
    from reclaif.cli import main

    args = ["plan", "--config", str(repo_root / "configs" / "mistral-7b-esci.yaml"),
            "--gpus", "8", "--nodes", "2"]
    assert main(args + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["nodes"] == 2 and data["memory"]["dpo"]["fits"]
    assert data["assumptions"]["prompts"] == round(0.6 * 4863)
    assert main(args + ["--gpus", "1", "--gpu-memory-gb", "16"]) == 0
    assert "does not fit" in capsys.readouterr().out
    # overrides as for `reclaif run`: one sampler per GPU of the 2 x 8 allocation
    assert main(args + ["--json", "ray.num_samplers=16"]) == 0
    wide = json.loads(capsys.readouterr().out)
    assert wide["iteration"]["sample"]["seconds"] == pytest.approx(
        data["iteration"]["sample"]["seconds"] / 2)


# Peak host memory of `reclaif train dpo` on 2 CPU ranks (torchrun, gloo, DS_ACCELERATOR=cpu),
# ZeRO-3 (configs/deepspeed/zero3_cpu.json), SmolLM2-135M in fp32, 1 pair x 128 tokens per
# rank, 3 steps and the checkpoint: the largest sum of both ranks' RSS, sampled every 0.2 s
# (psutil), at 3c19589 (7.12 GiB before zero.Init loading, 48a0180^: the fp32 file is mmapped,
# so its full copy was cheap here; the peak is the optimizer step either way).
MEASURED_TWO_CPU_RANKS_GIB = 7.45


def _two_cpu_ranks(**overrides):
    return load_config(None, [
        "recommender.model=default", "sft.enabled=false", "dpo.engine=deepspeed",
        "dpo.deepspeed_config=configs/deepspeed/zero3_cpu.json", "dpo.device=cpu",
        "dpo.batch_size=1", "dpo.max_length=128", *[f"{k}={v}" for k, v in overrides.items()]])


def test_cpu_ranks_hold_their_whole_working_set_in_host_memory():
    """On CPU ranks the host holds what a GPU would (DeepSpeed's states, activations, the
    kernel's logits) plus fp32 weights' 2 more bytes, ZeRO-3's gathered parameters (the whole
    model: 135 M < the 1e9 reuse distance) and AdamW's 8 bytes of temporaries per partitioned
    parameter, per rank, and each rank's process; and that matches the measured run."""
    n = model_shape("default").total_params()
    a = Assumptions()
    m = plan(_two_cpu_ranks(), 2)["memory"]["dpo"]
    device = (m["model_states_gib"] + m["activations_gib"] + m["logits_gib"]) * GIB
    per_rank = device + 2 * n / 2 + 4 * n + 8 * n / 2
    assert m["device"] == "cpu"
    assert m["host_per_node_gib"] == pytest.approx(
        m["cpu_per_node_gib"] + 2 * (a.host_overhead_gb + per_rank / GIB))
    assert m["host_per_node_gib"] == pytest.approx(MEASURED_TWO_CPU_RANKS_GIB, rel=0.25)


def test_bf16_cpu_ranks_gather_two_byte_parameters_and_keep_no_fp32_weight_copy():
    n = model_shape("default").total_params()
    fp32 = plan(_two_cpu_ranks(), 2)["memory"]["dpo"]
    bf16 = plan(_two_cpu_ranks(**{"dpo.bf16": "true"}), 2)["memory"]["dpo"]
    # fp32 -> bf16: gathered parameters 4 -> 2 bytes, no 2 extra bytes per partitioned weight
    saved = (fp32["host_working_per_rank_gib"] - bf16["host_working_per_rank_gib"]) * GIB
    kernel = (bf16["logits_gib"] - fp32["logits_gib"] + fp32["activations_gib"]
              - bf16["activations_gib"]) * GIB
    assert saved - kernel == pytest.approx(2 * n + 2 * n / 2)


def test_gpu_ranks_host_memory_is_deepspeeds_cpu_figure_plus_the_processes(mistral_cfg):
    m = plan(mistral_cfg, 8, 1)["memory"]["dpo"]
    assert m["device"] == "gpu" and m["host_working_per_rank_gib"] == 0
    assert m["host_per_node_gib"] == pytest.approx(
        m["cpu_per_node_gib"] + 8 * Assumptions().host_overhead_gb)
