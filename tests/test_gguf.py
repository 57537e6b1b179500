"""reclaif.llm.gguf: a GGUF's Llama read without the `gguf` package (what the lent GPU machine
lacks). Small files written here check each tensor type, the q/k unpermutation and the errors;
the embedded model's own file is compared with what transformers' GGUF conversion (through the
`gguf` package) made of it."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from reclaif.errors import CheckpointError
from reclaif.llm import gguf as reader
from reclaif.llm import models

# ------------------------------------------------------------------- a minimal GGUF writer


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, value) -> bytes:
    if isinstance(value, str):
        return _str(key) + struct.pack("<I", 8) + _str(value)
    if isinstance(value, float):
        return _str(key) + struct.pack("<If", 6, value)
    if isinstance(value, int):
        return _str(key) + struct.pack("<II", 4, value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return _str(key) + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(map(_str, value))
    return _str(key) + struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(
        f"<{len(value)}i", *value)


def write_gguf(path: Path, metadata: dict, tensors: list[tuple[str, tuple, int, bytes]]) -> Path:
    """tensors: (name, numpy shape, ggml type, raw bytes)."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    head += b"".join(_kv(k, v) for k, v in metadata.items())
    offsets, offset = [], 0
    for _, _, _, raw in tensors:
        offsets.append(offset)
        offset += -(-len(raw) // 32) * 32
    for (name, shape, kind, _), off in zip(tensors, offsets):
        head += _str(name) + struct.pack("<I", len(shape)) + struct.pack(
            f"<{len(shape)}Q", *reversed(shape)) + struct.pack("<IQ", kind, off)
    data = b"".join(raw + b"\0" * (-len(raw) % 32) for _, _, _, raw in tensors)
    path.write_bytes(head + b"\0" * (-len(head) % 32) + data)
    return path


def _half(x: float) -> bytes:
    return np.float16(x).tobytes()


def test_each_tensor_type_dequantises_to_its_values(tmp_path):
    j = np.arange(16)
    nibbles = bytes(int(a) | int(b) << 4 for a, b in zip(j, 15 - j))
    q8 = np.arange(-16, 16, dtype=np.int8)
    f32 = np.array([1.5, -2.25], np.float32)
    bf16 = (np.array([3.0, -0.5], np.float32).view(np.uint32) >> 16).astype(np.uint16)
    path = write_gguf(tmp_path / "t.gguf", {"general.architecture": "llama"}, [
        ("q4_1", (32,), reader.Q4_1, _half(0.5) + _half(-1.0) + nibbles),
        ("q4_0", (32,), reader.Q4_0, _half(2.0) + nibbles),
        ("q8_0", (32,), reader.Q8_0, _half(0.25) + q8.tobytes()),
        ("f16", (2,), reader.F16, np.array([0.5, -4], np.float16).tobytes()),
        ("bf16", (2,), reader.BF16, bf16.tobytes()),
        ("f32", (1, 2), reader.F32, f32.tobytes())])
    g = reader.read_gguf(path)
    got = {t.name: g.array(t) for t in g.tensors}
    low_high = np.concatenate([j, 15 - j]).astype(np.float32)  # element i of 0-15, then 16-31
    np.testing.assert_array_equal(got["q4_1"], low_high * 0.5 - 1.0)
    np.testing.assert_array_equal(got["q4_0"], (low_high - 8) * 2.0)
    np.testing.assert_array_equal(got["q8_0"], q8.astype(np.float32) * 0.25)
    np.testing.assert_array_equal(got["f16"], [0.5, -4])
    np.testing.assert_array_equal(got["bf16"], [3.0, -0.5])
    assert got["f32"].shape == (1, 2) and got["f32"].tolist() == [[1.5, -2.25]]


def _llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q and k (LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def _tiny_llama(tmp_path: Path, with_output: bool = False) -> tuple[Path, dict]:
    hidden, heads, kv, inter, vocab = 8, 2, 1, 16, 4
    rng = np.random.default_rng(0)
    w = {"q": rng.standard_normal((hidden, hidden), np.float32),
         "k": rng.standard_normal((hidden // heads * kv, hidden), np.float32)}
    f32 = lambda a: a.astype(np.float32).tobytes()  # noqa: E731
    tensors = [("token_embd.weight", (vocab, hidden), reader.F32, f32(np.ones((vocab, hidden)))),
               ("blk.0.attn_q.weight", w["q"].shape, reader.F32, f32(_llama_permute(w["q"], heads))),
               ("blk.0.attn_k.weight", w["k"].shape, reader.F32, f32(_llama_permute(w["k"], kv))),
               ("blk.0.ffn_down.weight", (hidden, inter), reader.F32, f32(np.zeros((hidden, inter)))),
               ("output_norm.weight", (hidden,), reader.F32, f32(np.ones(hidden)))]
    if with_output:
        tensors.append(("output.weight", (vocab, hidden), reader.F32, f32(np.ones((vocab, hidden)))))
    meta = {"general.architecture": "llama", "llama.block_count": 1,
            "llama.embedding_length": hidden, "llama.feed_forward_length": inter,
            "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv,
            "llama.rope.freq_base": 10000.0, "llama.context_length": 64,
            "tokenizer.ggml.tokens": ["<s>", "</s>", "a", "b"], "tokenizer.ggml.bos_token_id": 0,
            "tokenizer.ggml.eos_token_id": 1}
    return write_gguf(tmp_path / f"tiny{int(with_output)}.gguf", meta, tensors), w


def test_llama_names_config_and_unpermuted_q_k(tmp_path):
    path, w = _tiny_llama(tmp_path)
    g = reader.read_gguf(path)
    sd = reader.llama_state_dict(g)
    assert set(sd) == {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                       "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight",
                       "model.norm.weight"}
    torch.testing.assert_close(sd["model.layers.0.self_attn.q_proj.weight"], torch.from_numpy(w["q"]))
    torch.testing.assert_close(sd["model.layers.0.self_attn.k_proj.weight"], torch.from_numpy(w["k"]))
    cfg = reader.llama_config(g)
    assert cfg == {"max_position_embeddings": 64, "hidden_size": 8, "intermediate_size": 16,
                   "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                   "rope_theta": 10000.0, "vocab_size": 4, "bos_token_id": 0, "eos_token_id": 1,
                   "tie_word_embeddings": True}
    assert reader.llama_config(reader.read_gguf(_tiny_llama(tmp_path, True)[0]))[
        "tie_word_embeddings"] is False


def test_what_it_cannot_read_is_refused_by_name(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="x.gguf: not a GGUF file"):
        reader.read_gguf(tmp_path / "x.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(_tiny_llama(tmp_path)[0].read_bytes()[:40])
    with pytest.raises(CheckpointError, match="cut short"):
        reader.read_gguf(cut)
    k_quant = write_gguf(tmp_path / "k.gguf", {}, [("w", (256,), 12, b"\0" * 144)])
    with pytest.raises(CheckpointError, match="tensor w has ggml type 12"):
        reader.read_gguf(k_quant)
    qwen = write_gguf(tmp_path / "q.gguf", {"general.architecture": "qwen2"}, [])
    with pytest.raises(CheckpointError, match="architecture 'qwen2'"):
        reader.llama_config(reader.read_gguf(qwen))
    with pytest.raises(CheckpointError, match="GGUF file not found"):
        models.resolve_model(str(tmp_path / "absent.gguf"))


# ------------------------------------------------------------------ the embedded model's file


@pytest.fixture(scope="module")
def embedded() -> reader.GGUF:
    shared = Path(__file__).resolve().parents[2] / "shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    return reader.read_gguf(shared if shared.is_file() else models.default_gguf_path())


# transformers' own conversion of this file (gguf 0.19's dequantise, then transformers 5.25's
# q/k processor; AutoTokenizer.from_pretrained(gguf_file=...)), recorded once: the first 16 hex
# digits of the SHA-256 of each float32 tensor's bytes, and the token ids of two strings. (The
# whole file compared equal tensor by tensor, 272 of 272, when this reader was written.)
REFERENCE_DIGESTS = {
    "token_embd.weight": ((49152, 576), "3fd491c8066dd9dc"),      # Q8_0
    "blk.0.attn_q.weight": ((576, 576), "54b377bbfa2deab9"),      # Q4_1, unpermuted
    "blk.0.attn_k.weight": ((192, 576), "814d239237d0643a"),      # Q4_1, unpermuted (3 heads)
    "blk.0.ffn_down.weight": ((576, 1536), "0b78b2226f740ed5"),   # Q4_1
    "blk.29.attn_v.weight": ((192, 576), "ccd13910de7a7987"),     # Q4_1
    "output_norm.weight": ((576,), "3b87f8e27335e67f"),           # F32
}
REFERENCE_IDS = {
    "Recommend 3 artists. “Ünïcödé” 🎵\n\n  spaced":
        [48617, 216, 35, 4936, 30, 619, 142, 246, 94, 25972, 83, 7466, 84, 2756, 573, 15107, 232,
         130, 8866, 23861],
    "<|im_start|>user\nSASRec #3 12%; 5 listeners next<|im_end|>":
        [1, 4093, 198, 67, 2211, 10845, 907, 35, 216, 33, 34, 38370, 216, 37, 19657, 1867, 2],
}


def test_embedded_weights_equal_transformers_conversion(embedded):
    import hashlib

    sd = reader.llama_state_dict(embedded)
    assert len(sd) == 272 and "lm_head.weight" not in sd  # tied to the embeddings
    for name, (shape, digest) in REFERENCE_DIGESTS.items():
        w = sd[reader.hf_name(name)].numpy()
        assert w.shape == shape and w.dtype == np.float32, name
        assert hashlib.sha256(w.tobytes()).hexdigest()[:16] == digest, name


def test_embedded_tokenizer_equals_transformers_gguf_tokenizer(embedded):
    tok = reader.tokenizer(embedded)
    assert len(tok) == 49152
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>")
    for text, ids in REFERENCE_IDS.items():
        assert tok(text, add_special_tokens=False)["input_ids"] == ids, text
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
