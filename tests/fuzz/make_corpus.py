#!/usr/bin/env python3
"""Writes the fuzz seed corpus (tests/fuzz/corpus/<target>/): small valid files and near misses.

Deterministic; rerun after a format change:  python3 tests/fuzz/make_corpus.py [SHARED_DIR]
tok512.bin (llama2.c's 512-token tokenizer) is copied from SHARED_DIR/data/tinyllamas when there.
"""
import json
import pathlib
import shutil
import struct
import sys

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# --- safetensors --------------------------------------------------------------------------------

def st(header, data, header_len=None):
    text = json.dumps(header, separators=(",", ":")).encode() if not isinstance(header, bytes) else header
    text += b" " * ((8 - len(text) % 8) % 8)
    n = len(text) if header_len is None else header_len
    return struct.pack("<Q", n) + text + data


def safetensors():
    f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, 7)
    f64 = struct.pack("<2d", 0.25, -8)
    half = struct.pack("<4H", 0x3C00, 0xC000, 0x7C00, 0x0001)  # F16 1, -2, inf, tiny
    bf16 = struct.pack("<2H", 0x3F80, 0xFF80)
    i64 = struct.pack("<q", -3)
    good = {
        "__metadata__": {"format": "pt", "lmforge": "fuzz seed"},
        "f64": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
        "i64": {"dtype": "I64", "shape": [], "data_offsets": [16, 24]},
        "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 48]},
        "h": {"dtype": "F16", "shape": [2, 2], "data_offsets": [48, 56]},
        "b": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [56, 60]},
        "u8": {"dtype": "U8", "shape": [3], "data_offsets": [60, 63]},
        "empty": {"dtype": "F32", "shape": [0, 5], "data_offsets": [63, 63]},
    }
    data = f64 + i64 + f32 + half + bf16 + b"\x01\x02\x03"
    write("safetensors", "valid_mixed", st(good, data))
    # Unaligned tensors and a hole, as a foreign writer may leave them.
    write("safetensors", "valid_unaligned",
          st({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
              "x": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]},
              "y": {"dtype": "BF16", "shape": [1], "data_offsets": [12, 14]}}, b"\x07" + f32[:8] + b"zzz" + bf16[:2]))
    write("safetensors", "valid_empty_header", st({}, b""))
    one = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    write("safetensors", "miss_truncated", st(one, f32[:5]))
    write("safetensors", "miss_overlap",
          st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, f32[:12]))
    write("safetensors", "miss_shape_product",
          st({"a": {"dtype": "F16", "shape": [3], "data_offsets": [0, 8]}}, f32[:8]))
    write("safetensors", "miss_header_len", st(one, f32[:8], header_len=10**6))
    write("safetensors", "miss_bad_json", st(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]', f32[:8]))
    write("safetensors", "miss_dtype",
          st({"a": {"dtype": "F8_E4M3", "shape": [4, 2], "data_offsets": [0, 8]},
              "__metadata__": {"k": "v"}}, f32[:8]))


# --- llama2.c checkpoints ------------------------------------------------------------------------

def llama2c(dim, hidden, layers, heads, kv_heads, vocab, seq_len, extra=0):
    hs = dim // heads
    V = abs(vocab)
    kv = hs * kv_heads
    n = V * dim + layers * dim + layers * (2 * dim * dim + 2 * kv * dim) + layers * dim
    n += 3 * layers * hidden * dim + dim + seq_len * hs + (V * dim if vocab < 0 else 0) + extra
    head = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq_len)
    return head + struct.pack(f"<{n}f", *[((i * 7919) % 101 - 50) / 64 for i in range(n)]) if n > 0 else head


def llama2c_seeds():
    write("llama2c", "valid_tied", llama2c(4, 6, 1, 2, 1, 3, 2))
    write("llama2c", "valid_untied", llama2c(4, 5, 2, 2, 2, -5, 3))
    write("llama2c", "valid_mha", llama2c(8, 8, 1, 4, 4, 2, 1))
    write("llama2c", "miss_truncated", llama2c(4, 6, 1, 2, 1, 3, 2)[:-4])
    write("llama2c", "miss_trailing", llama2c(4, 6, 1, 2, 1, 3, 2, extra=1))
    write("llama2c", "miss_odd_head", llama2c(6, 6, 1, 2, 1, 3, 2))
    write("llama2c", "miss_kv_heads", llama2c(8, 6, 1, 4, 3, 3, 2))
    write("llama2c", "miss_header_only", struct.pack("<7i", 64, 172, 5, 8, 4, 512, 512))
    write("llama2c", "miss_short", struct.pack("<3i", 4, 6, 1))


# --- llama2.c tokenizers -------------------------------------------------------------------------

def tokenizer(pieces, max_len=None):
    max_len = max_len if max_len is not None else max(len(p) for p, _ in pieces)
    out = struct.pack("<i", max_len)
    for p, score in pieces:
        out += struct.pack("<fi", score, len(p)) + p
    return out


def sp_tokenizer(shared):
    base = [(b"<unk>", 0.0), (b"\n<s>\n", 0.0), (b"\n</s>\n", 0.0)]
    base += [(b"<0x%02X>" % b, 0.0) for b in range(256)]
    merges = [(b" ", -1.0), (b"a", -2.0), (b"b", -2.0), (b" a", -3.0), (b"ab", -0.5),
              (b" ab", -0.25), (b"\xc3\xa9", -4.0), (b"<0x41>", -5.0), (b"", -6.0)]
    write("sp_tokenizer", "valid_small", tokenizer(base + merges))
    write("sp_tokenizer", "valid_minimal", tokenizer(base))
    write("sp_tokenizer", "miss_truncated", tokenizer(base + merges)[:-3])
    write("sp_tokenizer", "miss_byte_piece", tokenizer(base[:40] + [(b"<0xZZ>", 0.0)] + base[41:]))
    write("sp_tokenizer", "miss_too_long", tokenizer(base + merges, max_len=3))
    tok = pathlib.Path(shared) / "data/tinyllamas/tok512.bin"
    if tok.exists():
        shutil.copyfile(tok, CORPUS / "sp_tokenizer" / "tok512.bin")


if __name__ == "__main__":
    shared = sys.argv[1] if len(sys.argv) > 1 else str(HERE.parents[2] / "shared")
    safetensors()
    llama2c_seeds()
    sp_tokenizer(shared)
