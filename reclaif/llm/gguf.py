"""A GGUF file's Llama weights, config and tokenizer, read without the `gguf` package.

transformers reads GGUF through the `gguf` package, which the lent GPU machine lacks and cannot
fetch (docs/CLUSTER.md, "The GPU proof"); the embedded model is a plain Llama in three tensor
types, so reading it here is short. `read_gguf`, then `llama_config`, `llama_state_dict` and
`tokenizer` give what transformers' own conversion gives (tests/test_gguf.py holds digests of
that conversion, tensor by tensor and token by token): the config's fields, the state dict
under transformers' names (q and k unpermuted as llama.cpp permuted them for its rotary
layout) and the byte-level BPE tokenizer with the chat template. Format: github.com/ggml-org/ggml/blob/master/docs/gguf.md.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from reclaif.errors import CheckpointError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Metadata value types: struct format of the scalars (8 string, 9 array: read apart).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# ggml tensor types read here: (elements per block, bytes per block).
F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30
_BLOCKS = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34),
           BF16: (1, 2)}
TOKEN_CONTROL = 3  # tokenizer.ggml.token_type of special tokens (<|im_start|>, ...)
# transformers' LlamaConfig fields from the llama.* keys
_CONFIG_KEYS = {"context_length": "max_position_embeddings", "embedding_length": "hidden_size",
                "feed_forward_length": "intermediate_size", "block_count": "num_hidden_layers",
                "attention.head_count": "num_attention_heads",
                "attention.head_count_kv": "num_key_value_heads",
                "attention.layer_norm_rms_epsilon": "rms_norm_eps",
                "rope.freq_base": "rope_theta", "vocab_size": "vocab_size"}
# tokenizer.ggml.<key> → the token's role (transformers' <role>_token, <role>_token_id)
_TOKEN_IDS = {"bos_token_id": "bos", "eos_token_id": "eos", "unknown_token_id": "unk",
              "padding_token_id": "pad"}
# llama.cpp's tensor names → transformers' (blk.N.* under model.layers.N.)
_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (GGUF lists the innermost dimension first)
    kind: int               # ggml type
    offset: int             # from the start of the data section


@dataclass
class GGUF:
    path: Path
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_start: int

    def array(self, info: TensorInfo) -> np.ndarray:
        """The tensor as float32 (dequantised), read through a memory map."""
        per_block, block_bytes = _BLOCKS[info.kind]
        count = int(np.prod(info.shape))
        raw = np.memmap(self.path, dtype=np.uint8, mode="r",
                        offset=self.data_start + info.offset,
                        shape=(count // per_block * block_bytes,))
        return dequantize(np.asarray(raw), info.kind).reshape(info.shape)


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise CheckpointError(f"{f.name}: cut short at byte {f.tell()} (not a whole GGUF file)")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _read(f, "<Q")
    data = f.read(n)
    if len(data) != n:  # a damaged length would otherwise shift every later read silently
        raise CheckpointError(f"{f.name}: cut short at byte {f.tell()} (not a whole GGUF file)")
    return data.decode("utf-8")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, n = _read(f, "<I"), _read(f, "<Q")
        return [_value(f, item) for _ in range(n)]
    raise CheckpointError(f"{f.name}: metadata value type {kind} at byte {f.tell()} is unknown")


def read_gguf(path: str | Path) -> GGUF:
    """The metadata and tensor directory of a GGUF (version 2 or 3); tensors stay on disk."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise CheckpointError(f"{path}: not a GGUF file (no GGUF magic)")
        version = _read(f, "<I")
        if version not in (2, 3):
            raise CheckpointError(f"{path}: GGUF version {version}; versions 2 and 3 are read")
        n_tensors, n_kv = _read(f, "<Q"), _read(f, "<Q")
        metadata = {}
        for _ in range(n_kv):
            key = _string(f)
            metadata[key] = _value(f, _read(f, "<I"))
        tensors = []
        for _ in range(n_tensors):
            name = _string(f)
            dims = [_read(f, "<Q") for _ in range(_read(f, "<I"))]
            kind, offset = _read(f, "<I"), _read(f, "<Q")
            if kind not in _BLOCKS:
                raise CheckpointError(f"{path}: tensor {name} has ggml type {kind}; this reader "
                                      f"dequantises types {sorted(_BLOCKS)} only")
            tensors.append(TensorInfo(name, tuple(reversed(dims)), kind, offset))
        align = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        start = -(-f.tell() // align) * align
    return GGUF(path, metadata, tensors, start)


def dequantize(raw: np.ndarray, kind: int) -> np.ndarray:
    """Flat float32 values of raw ggml blocks, in the `gguf` package's arithmetic."""
    if kind == F32:
        return raw.view(np.float32).copy()
    if kind == F16:
        return raw.view(np.float16).astype(np.float32)
    if kind == BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    blocks = raw.reshape(-1, _BLOCKS[kind][1])
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if kind == Q8_0:
        return (blocks[:, 2:].copy().view(np.int8).astype(np.float32) * d).reshape(-1)
    qs = blocks[:, 4:] if kind == Q4_1 else blocks[:, 2:]
    # nibbles: the low ones are a block's elements 0-15, the high ones 16-31
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
    if kind == Q4_0:
        return (d * (q.astype(np.int8) - np.int8(8)).astype(np.float32)).reshape(-1)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    return ((d * q.astype(np.float32)) + m).reshape(-1)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's interleaving of each head's rotary halves in q/k projections."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def hf_name(name: str) -> str:
    """transformers' parameter name of a llama.cpp tensor name."""
    stem, _, suffix = name.rpartition(".")
    parts = stem.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    raise CheckpointError(f"tensor {name}: not a Llama tensor name this reader maps")


def llama_config(g: GGUF) -> dict[str, Any]:
    """LlamaConfig keyword arguments from the file's llama.* and tokenizer keys."""
    arch = g.metadata.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{g.path}: architecture {arch!r}; only llama files are read here")
    cfg = {hf: g.metadata[f"llama.{key}"] for key, hf in _CONFIG_KEYS.items()
           if f"llama.{key}" in g.metadata}
    if "vocab_size" not in cfg:
        cfg["vocab_size"] = len(g.metadata["tokenizer.ggml.tokens"])
    for key, role in _TOKEN_IDS.items():
        if f"tokenizer.ggml.{key}" in g.metadata:
            cfg[f"{role}_token_id"] = g.metadata[f"tokenizer.ggml.{key}"]
    # no output.weight: the output layer is the embedding matrix
    cfg["tie_word_embeddings"] = all(t.name != "output.weight" for t in g.tensors)
    return cfg


def llama_state_dict(g: GGUF) -> dict[str, Any]:
    """float32 torch tensors under transformers' names."""
    import torch

    heads = int(g.metadata["llama.attention.head_count"])
    kv_heads = int(g.metadata.get("llama.attention.head_count_kv", heads))
    out = {}
    for info in g.tensors:
        w = g.array(info)
        if ".attn_q." in info.name:
            w = _unpermute(w, heads)
        elif ".attn_k." in info.name:
            w = _unpermute(w, kv_heads)
        out[hf_name(info.name)] = torch.from_numpy(np.ascontiguousarray(w))
    return out


def tokenizer(g: GGUF) -> Any:
    """The file's byte-level BPE tokenizer as a transformers fast tokenizer, with its special
    tokens and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    meta = g.metadata
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"{g.path}: tokenizer model {kind!r}; only byte-level BPE "
                              "('gpt2') is read here")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                   dropout=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
    types = meta.get("tokenizer.ggml.token_type", [])
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, t in enumerate(types) if t == TOKEN_CONTROL])
    special = {f"{role}_token": tokens[meta[f"tokenizer.ggml.{key}"]]
               for key, role in _TOKEN_IDS.items() if f"tokenizer.ggml.{key}" in meta}
    return PreTrainedTokenizerFast(tokenizer_object=backend,
                                   chat_template=meta.get("tokenizer.chat_template"), **special)
