"""`reclaif plan`: will a run fit on N GPUs, and how long will one DPO iteration take?

Memory of model states comes from DeepSpeed's own ZeRO estimators (the functions behind
`estimate_zero3_model_states_mem_needs_all_cold`), fed with parameter counts computed from an
architecture's config numbers, so nothing is downloaded. Activations and time are estimated
from formulas written out below; every assumption is an option with a default and is printed.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reclaif.config import RunConfig, TrainConfig
from reclaif.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
# Users (ESCI: queries) per dataset, the paper's Table 1: the default number of prompts.
PAPER_USERS = {"esci": 4863, "beauty": 253, "lastfm": 1220}


@dataclass(frozen=True)
class ModelShape:
    """The config numbers of a decoder of the Llama family (RMSNorm, GQA, SwiGLU MLP)."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool = False

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        q = self.heads * self.head_dim
        attn = self.hidden * q + 2 * self.hidden * self.kv_dim + q * self.hidden
        bias = (q + 2 * self.kv_dim) if self.qkv_bias else 0
        return attn + bias + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def total_params(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params() + self.hidden

    def largest_layer_params(self) -> int:
        """Largest module's own parameters, as DeepSpeed's `model_to_params` counts them."""
        q = self.heads * self.head_dim
        return max(self.vocab * self.hidden, self.hidden * self.intermediate,
                   self.hidden * q + (q if self.qkv_bias else 0))


_MISTRAL_7B = dict(hidden=4096, layers=32, intermediate=14336, vocab=32000, heads=32,
                   kv_heads=8, head_dim=128, tied=False)
_SMOLLM2_135M = dict(hidden=576, layers=30, intermediate=1536, vocab=49152, heads=9,
                     kv_heads=3, head_dim=64, tied=True)
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "mistralai/mistral-7b-instruct-v0.1": _MISTRAL_7B,
    "mistralai/mistral-7b-instruct-v0.2": _MISTRAL_7B,
    "mistralai/mistral-7b-v0.1": _MISTRAL_7B,
    "mistralai/mistral-7b-instruct-v0.3": {**_MISTRAL_7B, "vocab": 32768},
    "huggingfacetb/smollm2-135m-instruct": _SMOLLM2_135M,
    "huggingfacetb/smollm2-135m": _SMOLLM2_135M,
}
_FAMILY = {"llama", "mistral", "qwen2"}


def model_shape(model: str) -> ModelShape:
    """`default`, a known hub name, or a local HF directory (its config.json) → ModelShape."""
    if model == "default":
        return ModelShape("SmolLM2-135M-Instruct (default)", **_SMOLLM2_135M)
    path = Path(model).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise ConfigError(f"recommender.model: {path} has no config.json")
        c = json.loads(cfg_file.read_text(encoding="utf-8"))
        if c.get("model_type") not in _FAMILY:
            raise ConfigError(f"{cfg_file}: model_type {c.get('model_type')!r} is not one the "
                              f"planner counts ({', '.join(sorted(_FAMILY))})")
        try:
            heads = c["num_attention_heads"]
            return ModelShape(str(path), hidden=c["hidden_size"], layers=c["num_hidden_layers"],
                              intermediate=c["intermediate_size"], vocab=c["vocab_size"],
                              heads=heads, kv_heads=c.get("num_key_value_heads") or heads,
                              head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                              tied=bool(c.get("tie_word_embeddings", False)),
                              qkv_bias=c["model_type"] == "qwen2")
        except KeyError as e:
            raise ConfigError(f"{cfg_file}: missing {e.args[0]}") from None
    known = KNOWN_MODELS.get(model.lower())
    if known is None:
        raise ConfigError(f"recommender.model: {model!r} is neither a local HF directory nor one "
                          f"of the known architectures ({', '.join(sorted(KNOWN_MODELS))})")
    return ModelShape(model, **known)


def deepspeed_zero(train: TrainConfig, key: str) -> dict[str, Any]:
    """Stage and offload of the phase's DeepSpeed JSON ({'stage': 0} for engine=torch)."""
    if train.engine != "deepspeed":
        return {"stage": 0, "offload_optimizer": False, "offload_param": False, "file": ""}
    path = Path(train.deepspeed_config)
    if not path.is_absolute() and not path.exists():
        path = REPO / path
    if not path.exists():
        raise ConfigError(f"{key}.deepspeed_config: {train.deepspeed_config} not found")
    try:
        zero = json.loads(path.read_text(encoding="utf-8")).get("zero_optimization", {})
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None

    def off(name: str) -> bool:
        return (zero.get(name) or {}).get("device", "none") in ("cpu", "nvme")

    return {"stage": int(zero.get("stage", 0)), "offload_optimizer": off("offload_optimizer"),
            "offload_param": off("offload_param"), "file": str(train.deepspeed_config),
            "max_reuse_distance": int(zero.get("stage3_max_reuse_distance", 10**9))}


def _import_deepspeed() -> None:
    # DeepSpeed logs its accelerator choice to stdout on import; keep stdout for the plan.
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401


def model_states_bytes(shape: ModelShape, zero: dict[str, Any], gpus: int, nodes: int) -> tuple[int, int]:
    """(GPU bytes per GPU, CPU bytes per node) for parameters, gradients and Adam states."""
    n = shape.total_params()
    if zero["stage"] in (1, 2, 3):
        _import_deepspeed()
    if zero["stage"] == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params=n, largest_layer_params=shape.largest_layer_params(),
            num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=zero["offload_optimizer"],
            cpu_offload_params=zero["offload_param"], zero_init=True)
        return gpu, cpu
    if zero["stage"] in (1, 2):  # ZeRO-1 keeps full gradients: ZeRO-2's figure is a lower bound
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params=n, num_gpus_per_node=gpus, num_nodes=nodes,
            cpu_offload=zero["offload_optimizer"])
        return gpu, cpu
    # Plain torch (DDP): fp32 weights 4 + fp32 grads 4 + Adam m and v 8 bytes, on every GPU.
    return 16 * n, 0


def activation_bytes(shape: ModelShape, sequences: int, seq_len: int, checkpointing: bool,
                     attn: str, bf16: bool) -> int:
    """Activations kept for backward by one micro batch, on one GPU.

    Source: Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
    Models" (2022), §4.1: a GPT layer keeps s·b·h·(34 + 5·a·s/h) bytes in 16-bit precision
    (no tensor parallelism), and with full recomputation only its input, 2·s·b·h. Redone for
    the Llama family (no dropout, RMSNorm, grouped KV heads of width h_kv, SwiGLU of width I),
    counting the tensors autograd saves, with t = s·b tokens:
        norms 2·(2th) + attention [norm out 2th, Q 2th, K and V 2·2·t·h_kv, output 2th]
        + MLP [norm out 2th, gate/up/SiLU/product 4·2tI]
        = t·(12h + 4h_kv + 8I) bytes per layer,
    plus 2·a·s²·b for the softmax probabilities when attention is eager (flash-attention and
    SDPA keep no s² matrix). Gradient checkpointing (one checkpoint per decoder layer, as
    transformers does) keeps 2·t·h per layer plus one layer recomputed during backward.
    fp32 doubles everything.
    """
    t = sequences * seq_len
    per_layer = t * (12 * shape.hidden + 4 * shape.kv_dim + 8 * shape.intermediate)
    if attn == "eager":
        per_layer += 2 * shape.heads * seq_len**2 * sequences
    total = (shape.layers * 2 * t * shape.hidden + per_layer) if checkpointing else shape.layers * per_layer
    return total * (1 if bf16 else 2)


def zero3_gathered_bytes(shape: ModelShape, zero: dict[str, Any], bf16: bool) -> int:
    """Parameters ZeRO-3 keeps gathered (whole) on every rank once its trace is recorded (step
    2 on): `PartitionedParameterCoordinator.__params_to_release` keeps any parameter that is
    used again within `stage3_max_reuse_distance` parameters (DeepSpeed's default 1e9), so a
    model under that size stays whole between forward and backward; not in the estimator."""
    if zero["stage"] != 3:
        return 0
    return min(shape.total_params(), zero.get("max_reuse_distance", 10**9)) * (2 if bf16 else 4)


def host_bytes_per_rank(shape: ModelShape, zero: dict[str, Any], train: TrainConfig,
                        world: int, device_bytes: int) -> int:
    """What one CPU rank (`device: cpu`, DS_ACCELERATOR=cpu) holds beyond its process: all of
    what a GPU rank would hold on its GPU (`device_bytes`: DeepSpeed's model states,
    activations, the log-prob kernel), plus what the estimator leaves out, as the trainer
    runs on CPU: fp32 weights are 4 bytes where the estimator counts 2; the parameters ZeRO-3
    keeps gathered (zero3_gathered_bytes); and torch's AdamW step (the CPU path,
    strategy.fill_ds_config) on the fp32 partition, whose single-tensor update holds
    sqrt(v) and sqrt(v)/bias-correction at once: 8 bytes per partitioned parameter."""
    n = shape.total_params()
    parts = world if zero["stage"] == 3 else 1
    fp32_weights = 2 * n // parts if not train.bf16 else 0
    return (device_bytes + fp32_weights + zero3_gathered_bytes(shape, zero, train.bf16)
            + 8 * n // parts)


def logits_bytes(shape: ModelShape, tokens: int, chunk: int,
                 fp32_weight_grad: bool = False) -> int:
    """fp32 logits and their gradient for one chunk of the fused log-prob kernel, and the fp32
    [vocab, hidden] accumulator a bf16 lm_head gradient sums in when the micro-batch spans
    several chunks (logprob_weight_grad: fp32)."""
    acc = shape.vocab * shape.hidden * 4 if fp32_weight_grad and tokens > chunk else 0
    return min(tokens, chunk) * shape.vocab * 4 * 2 + acc


@dataclass
class Assumptions:
    peak_tflops: float = 312.0     # A100 dense bf16; H100 SXM: 989
    mfu: float = 0.40              # training model-FLOPs utilisation
    sampling_mfu: float = 0.10     # decoding is memory-bound: a low utilisation
    judge_latency_s: float = 10.0  # one remote judge/teacher/scorer call
    headroom: float = 0.10         # memory kept free for fragmentation and spikes
    overhead_gb: float = 2.0       # CUDA context, NCCL buffers, allocator slack per GPU
    # host memory of one rank's process before its model: Python, torch, DeepSpeed,
    # transformers, the tokenizer and encoded data (0.38 GiB measured on a CPU rank; a CUDA
    # rank maps CUDA's libraries too, not measured here)
    host_overhead_gb: float = 0.4
    prompts: int = 0               # training prompts (0: data.max_train_examples, else Table 1)
    eval_prompts: int = 0          # evaluation prompts (0: data.max_eval_examples, else 20%)
    prompt_tokens: int = 600       # mean prompt length


def _phase_memory(cfg: RunConfig, train: TrainConfig, key: str, shape: ModelShape, gpus: int,
                  nodes: int, gpu_gb: float, a: Assumptions) -> dict[str, Any]:
    zero = deepspeed_zero(train, key)
    states, cpu = model_states_bytes(shape, zero, gpus, nodes)
    sequences = train.batch_size * (2 if key == "dpo" else 1)  # DPO: chosen + rejected
    attn = cfg.recommender.attn_implementation
    acts = activation_bytes(shape, sequences, train.max_length, train.gradient_checkpointing,
                            attn, train.bf16)
    logits = logits_bytes(shape, sequences * train.max_length, train.logprob_chunk,
                          train.bf16 and train.logprob_weight_grad == "fp32")
    total = states + acts + logits + a.overhead_gb * GIB
    usable = gpu_gb * GIB * (1 - a.headroom)
    # Host memory per node, as the trainer loads: each rank builds its model inside
    # deepspeed.zero.Init in the training dtype (session.load_policy), so no rank holds a full
    # copy; what remains is DeepSpeed's CPU figure (offloaded states; zero.Init's buffers), each
    # rank's process, and on CPU ranks their whole working set.
    on_host = train.device == "cpu"
    working = host_bytes_per_rank(shape, zero, train, gpus * nodes, states + acts + logits) \
        if on_host else 0
    host = cpu + gpus * (a.host_overhead_gb * GIB + working)
    return {"zero": zero, "micro_batch_sequences": sequences, "seq_len": train.max_length,
            "gradient_checkpointing": train.gradient_checkpointing,
            "model_states_gib": states / GIB, "activations_gib": acts / GIB,
            "logits_gib": logits / GIB, "overhead_gib": a.overhead_gb, "total_gib": total / GIB,
            "usable_gib": usable / GIB, "fits": total <= usable, "cpu_per_node_gib": cpu / GIB,
            "device": "cpu" if on_host else "gpu", "host_per_node_gib": host / GIB,
            "host_working_per_rank_gib": working / GIB}


def _remote_calls_s(calls: int, latency: float, concurrency: int) -> float:
    return math.ceil(calls / max(concurrency, 1)) * latency


def plan(cfg: RunConfig, gpus: int, nodes: int = 1, gpu_memory_gb: float = 80.0,
         assumptions: Assumptions | None = None) -> dict[str, Any]:
    """The whole plan as a dict (what `--json` prints)."""
    if gpus < 1 or nodes < 1:
        raise ConfigError(f"plan: gpus ({gpus}) and nodes ({nodes}) must be at least 1")
    a = assumptions or Assumptions()
    shape = model_shape(cfg.recommender.model)
    n = shape.total_params()
    world = gpus * nodes
    memory = {k: _phase_memory(cfg, getattr(cfg, k), k, shape, gpus, nodes, gpu_memory_gb, a)
              for k in ("sft", "dpo")}

    users = PAPER_USERS[cfg.data.dataset]
    prompts = a.prompts or cfg.data.max_train_examples or round(0.6 * users)
    eval_prompts = a.eval_prompts or cfg.data.max_eval_examples or round(0.2 * users)
    answer = cfg.sampling.max_new_tokens  # an upper bound: answers may stop earlier
    seq = min(a.prompt_tokens + answer, cfg.dpo.max_length)
    train_flops_s = world * a.peak_tflops * 1e12 * a.mfu
    r = cfg.ray
    sampler_gpus = min(world, r.num_samplers * r.gpus_per_sampler) if r.gpus_per_sampler else world
    sample_flops_s = sampler_gpus * a.peak_tflops * 1e12 * a.sampling_mfu
    remote = {"judge": cfg.judge.kind in ("llm", "panel"), "expl": cfg.explainability.kind == "llm",
              "teacher": cfg.teacher.kind == "llm"}

    sample_tokens = prompts * cfg.sampling.num_samples * (a.prompt_tokens + answer)
    judge_calls = prompts * (2 if cfg.judge.position_swap else 1)
    judge_conc = cfg.judge.llm.max_concurrency * r.num_judges
    pair_tokens = prompts * 2 * seq  # chosen + rejected, every prompt yielding a pair (bound)
    recompute = 8 / 6 if cfg.dpo.gradient_checkpointing else 1.0
    train_flops = 6 * n * pair_tokens * cfg.dpo.epochs * recompute
    ref_flops = 2 * n * pair_tokens
    eval_tokens = eval_prompts * (a.prompt_tokens + cfg.eval.max_new_tokens)
    expl_conc = cfg.explainability.llm.max_concurrency
    phases = {
        "sample": {"work": f"{prompts} prompts x {cfg.sampling.num_samples} answers, "
                           f"{sample_tokens / 1e6:.2f} M tokens on {sampler_gpus:g} of {world} "
                           "GPUs (ray.num_samplers x ray.gpus_per_sampler)",
                   "seconds": 2 * n * sample_tokens / sample_flops_s},
        "judge": {"work": f"{judge_calls} calls, {judge_conc} at a time" if remote["judge"]
                  else f"{judge_calls} local rubric verdicts",
                  "seconds": _remote_calls_s(judge_calls, a.judge_latency_s, judge_conc)
                  if remote["judge"] else 0.0},
        "reference": {"work": f"forward of {pair_tokens / 1e6:.2f} M pair tokens",
                      "seconds": ref_flops / train_flops_s},
        "train": {"work": f"6 x params x {pair_tokens / 1e6:.2f} M tokens x {cfg.dpo.epochs} "
                          f"epoch(s){' + recompute' if recompute > 1 else ''}",
                  "seconds": train_flops / train_flops_s},
        "eval": {"work": f"{eval_prompts} prompts greedy"
                         + (f" + {eval_prompts} explainability calls" if remote["expl"] else ""),
                 "seconds": 2 * n * eval_tokens / sample_flops_s
                 + (_remote_calls_s(eval_prompts, a.judge_latency_s, expl_conc) if remote["expl"] else 0.0)},
    }
    sft_tokens = prompts * min(a.prompt_tokens + answer, cfg.sft.max_length)
    sft = {"teacher_calls": prompts if remote["teacher"] else 0,
           "seconds": (_remote_calls_s(prompts, a.judge_latency_s, cfg.teacher.llm.max_concurrency)
                       if remote["teacher"] else 0.0)
           + 6 * n * sft_tokens * cfg.sft.epochs * (8 / 6 if cfg.sft.gradient_checkpointing else 1)
           / train_flops_s}
    return {"model": shape.name, "params": n, "largest_layer_params": shape.largest_layer_params(),
            "nodes": nodes, "gpus_per_node": gpus, "gpu_memory_gb": gpu_memory_gb,
            "memory": memory, "iteration": phases,
            "iteration_seconds": sum(p["seconds"] for p in phases.values()),
            "dpo_iterations": cfg.dpo.iterations, "sft": sft,
            "assumptions": {**asdict(a), "prompts": prompts, "eval_prompts": eval_prompts,
                            "answer_tokens": answer}}


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 60 else f"{seconds:.0f}s"


def format_plan(p: dict[str, Any], config: str = "") -> str:
    m, it, a = p["memory"], p["iteration"], p["assumptions"]
    z = m["dpo"]["zero"]
    zdesc = ("plain torch, no ZeRO" if z["stage"] == 0 else
             f"ZeRO-{z['stage']}, offload optimizer {'cpu' if z['offload_optimizer'] else 'none'}"
             f", params {'cpu' if z['offload_param'] else 'none'}")
    batch = [f"{k.upper()} {m[k]['micro_batch_sequences']}x{m[k]['seq_len']}" for k in ("sft", "dpo")]
    lines = [f"plan: {config}, {p['nodes']} node(s) x {p['gpus_per_node']} GPU(s) of "
             f"{p['gpu_memory_gb']:g} GiB; {p['model']}, {p['params'] / 1e9:.2f} B params "
             f"(largest layer {p['largest_layer_params'] / 1e6:.1f} M); {zdesc}",
             f"{'memory per GPU, GiB':<30}{batch[0]:>14}{batch[1]:>14}"]
    rows = [("model states (DeepSpeed)", "model_states_gib"), ("activations", "activations_gib"),
            ("log-prob kernel", "logits_gib"), ("CUDA/NCCL overhead", "overhead_gib"),
            (f"total (usable: {m['dpo']['usable_gib']:.2f})", "total_gib")]
    for label, key in rows:
        lines.append(f"  {label:<28}{m['sft'][key]:>14.2f}{m['dpo'][key]:>14.2f}")
    verdict = ["fits" if m[k]["fits"] else "does not fit" for k in ("sft", "dpo")]
    host = max(("sft", "dpo"), key=lambda k: m[k]["host_per_node_gib"])
    h = m[host]
    where = (f"the ranks' working set on the host (device: cpu) "
             f"{p['gpus_per_node'] * h['host_working_per_rank_gib']:.1f}, "
             if h["device"] == "cpu" else "")
    lines += [f"  {'verdict':<28}{verdict[0]:>14}{verdict[1]:>14}",
              f"  host memory per node ({host.upper()}): {h['host_per_node_gib']:.1f} GiB = "
              f"DeepSpeed's CPU model states {h['cpu_per_node_gib']:.1f} + {where}"
              f"{p['gpus_per_node']} rank processes x {a['host_overhead_gb']:g}",
              f"{'one DPO iteration':<20}{'time':>7}  work"]
    for name, ph in it.items():
        lines.append(f"  {name:<18}{_hms(ph['seconds']):>7}  {ph['work']}")
    lines += [f"  {'total':<18}{_hms(p['iteration_seconds']):>7}  x {p['dpo_iterations']} "
              f"iterations = {_hms(p['iteration_seconds'] * p['dpo_iterations'])}; SFT once "
              f"{_hms(p['sft']['seconds'])} ({p['sft']['teacher_calls']} teacher calls)",
              f"assumptions: {a['prompts']} training / {a['eval_prompts']} eval prompts of "
              f"{a['prompt_tokens']} tokens, answers {a['answer_tokens']} tokens (upper bound), "
              f"peak {a['peak_tflops']:g} TFLOPS/GPU, MFU {a['mfu']:g} (train) / "
              f"{a['sampling_mfu']:g} (sampling), {a['judge_latency_s']:g} s per remote LLM call, "
              f"{100 * a['headroom']:g}% memory headroom"]
    return "\n".join(lines)
