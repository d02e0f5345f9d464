#!/usr/bin/env python3
"""Tiny Hugging Face GPT-2 / Llama checkpoints and their reference logits, for lmforge's HF import tests.

The models are written exactly as `save_pretrained` writes them (config.json, generation_config.json,
safetensors with save_pretrained's tensor names, sharded with model.safetensors.index.json where asked),
from random weights (fixed seeds). Their forward is written here in plain PyTorch, reproducing the
modeling code of `transformers` (GPT2LMHeadModel, LlamaForCausalLM) operation by operation, and is
evaluated in float64 from the weights AS STORED (after rounding to bf16 / f16). For each model
<out>/<name>.reference.safetensors holds
  input_ids     I32 (B, T)      B=2, T=11, fixed seed; position ids are 0..T-1, no padding
  logits        F32 (B, T, V)
  hidden.{l}    F32 (B, T, C)   residual stream after decoder block l
  final_norm    F32 (B, T, C)   output of the final norm (ln_f / model.norm)

Where `transformers` is importable, every model is also loaded with AutoModelForCausalLM in float64 and
its logits are checked against the plain implementation. transformers keeps two float32 islands even
in a float64 model (the RoPE cos/sin tables and LlamaRMSNorm's upcast); the plain code reproduces them
in its `hf_exact` mode, which must match transformers to < 1e-6, while the stored reference is pure
float64 (it is printed how far transformers is from it, ~1e-7).

Regenerate the committed fixtures (Debian's python3-torch is enough; transformers optional):
  build/lmforge tokenizer train -i tests/data/sotu_sample/1934_franklin_d_roosevelt_d.txt -n 300 \\
      --threads 1 -o tests/fixtures/hf_tiny/gpt2/tokenizer.json
  /usr/bin/python3 tools/hf_reference.py generate tests/fixtures/hf_tiny

Other modes:
  tools/hf_reference.py check-export EXPORTED_DIR REFERENCE.safetensors [--atol X]
      Load a HF checkpoint directory (e.g. written by lmforge) with transformers in float64 (or, when
      transformers is absent, with the plain implementation), run it on the reference's input_ids and
      exit non-zero when max |logits - reference| > atol (default 1e-4).
  tools/hf_reference.py selftest
      Sanity checks of the plain implementation (RoPE conventions, llama3 frequencies, GPT-2 against
      tools/torch_reference.py, bf16 rounding, safetensors round trip).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

B, T = 2, 11
TRANSFORMERS_VERSION = "4.46.0"  # the version whose save_pretrained output is reproduced

# ----------------------------------------------------------------------------- safetensors

_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
_TORCH_NAME = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def bf16_bits(t):
    """float tensor -> uint16 array of bfloat16 bits (round to nearest even, as torch's conversion)."""
    return t.detach().to(torch.float32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def bf16_bits_manual(t):
    u = t.detach().to(torch.float32).numpy().view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even (no NaNs here)
    return r.astype(np.uint16)


def encode(t, dtype):
    """torch tensor -> (numpy array with the stored bytes, dtype string)."""
    if dtype == "BF16":
        return bf16_bits(t), dtype
    if dtype in ("I32", "I64"):
        return t.detach().numpy().astype(_NP[dtype]), dtype
    return t.detach().to(torch.float64).numpy().astype(_NP[dtype]), dtype


def decode(raw, dtype, shape):
    if dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return torch.from_numpy(bits.view(np.float32).reshape(shape).copy())
    a = np.frombuffer(raw, dtype=np.dtype(_NP[dtype]).newbyteorder("<")).reshape(shape)
    return torch.from_numpy(a.copy())


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (numpy array, dtype string)}; layout as the safetensors library writes it:
    8-byte LE header size, compact JSON header padded with spaces to a multiple of 8, data sorted by name."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs, off = [], 0
    for name in sorted(tensors):
        a, dt = tensors[name]
        data = np.ascontiguousarray(a).astype(np.dtype(a.dtype).newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path, with_dtypes=False):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    out, dtypes = {}, {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = decode(raw[8 + n + b : 8 + n + end], e["dtype"], e["shape"])
        dtypes[name] = (e["dtype"], tuple(e["shape"]))
    return (out, meta, dtypes) if with_dtypes else out


def read_checkpoint(d):
    """All tensors of a HF checkpoint directory (single model.safetensors or sharded with an index)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for fn in files:
        w.update(read_safetensors(os.path.join(d, fn)))
    return w


# ----------------------------------------------------------------------------- GPT-2 (GPT2LMHeadModel)


def gpt2_forward(cfg, w, ids, hiddens=None):
    """transformers' GPT2LMHeadModel.forward, float64, no dropout. Conv1D weights are (in, out)."""
    C, H = cfg["n_embd"], cfg["n_head"]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    act = cfg.get("activation_function", "gelu_new")
    Bn, Tn = ids.shape
    hd = C // H
    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][torch.arange(Tn)]
    causal = torch.ones(Tn, Tn, dtype=torch.bool).tril()
    for l in range(cfg["n_layer"]):
        p = lambda s: w[f"transformer.h.{l}.{s}"]
        h = F.layer_norm(x, (C,), p("ln_1.weight"), p("ln_1.bias"), eps=eps)
        q, k, v = (h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (z.reshape(Bn, Tn, H, hd).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(Bn, Tn, C)
        x = x + (y @ p("attn.c_proj.weight") + p("attn.c_proj.bias"))
        h = F.layer_norm(x, (C,), p("ln_2.weight"), p("ln_2.bias"), eps=eps)
        h = h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")
        if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            # NewGELUActivation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))
        elif act == "gelu":
            h = F.gelu(h)
        elif act == "relu":
            h = F.relu(h)
        else:
            raise ValueError(f"activation_function {act} not supported here")
        x = x + (h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias"))
        if hiddens is not None:
            hiddens[f"hidden.{l}"] = x
    x = F.layer_norm(x, (C,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps=eps)
    if hiddens is not None:
        hiddens["final_norm"] = x
    tied = cfg.get("tie_word_embeddings", True)
    head = w["transformer.wte.weight"] if tied or "lm_head.weight" not in w else w["lm_head.weight"]
    return x @ head.t()


# ----------------------------------------------------------------------------- Llama (LlamaForCausalLM)


def llama_head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def llama_inv_freq(cfg, dtype=torch.float64):
    """transformers' ROPE_INIT_FUNCTIONS[rope_type](config) -> inv_freq (attention_factor is 1 for these).
    dtype=float32 reproduces transformers bit for bit (it computes inv_freq in float32)."""
    d = llama_head_dim(cfg)
    base = float(cfg.get("rope_theta", 10000.0))
    # _compute_default_rope_parameters
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).to(dtype) / d))
    rs = cfg.get("rope_scaling") or {}
    rope_type = rs.get("rope_type", rs.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":  # _compute_linear_scaling_rope_parameters
        return inv_freq / rs["factor"]
    if rope_type == "llama3":  # _compute_llama3_parameters
        factor = rs["factor"]
        low_freq_factor = rs["low_freq_factor"]
        high_freq_factor = rs["high_freq_factor"]
        old_context_len = rs["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        # wavelen < high_freq_wavelen: do nothing; wavelen > low_freq_wavelen: divide by factor
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        # otherwise: interpolate between the two, using a smooth factor
        smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
        is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)
    raise ValueError(f"rope_type {rope_type} not supported here")


def llama_rope_tables(cfg, Tn, hf_exact):
    """cos, sin of shape (T, head_dim): emb = cat(freqs, freqs), freqs[t, i] = t * inv_freq[i].
    hf_exact: in float32 as LlamaRotaryEmbedding.forward does, then cast to float64."""
    dt = torch.float32 if hf_exact else torch.float64
    inv_freq = llama_inv_freq(cfg, dt)
    freqs = torch.arange(Tn, dtype=torch.int64).to(dt)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(torch.float64), emb.sin().to(torch.float64)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):  # x (B, H, T, hd); pairs (i, i + hd/2) rotate by t * inv_freq[i]
    return x * cos + rotate_half(x) * sin


def rms_norm(x, weight, eps, hf_exact):
    if hf_exact:  # LlamaRMSNorm upcasts to float32 (a downcast for a float64 model)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def llama_forward(cfg, w, ids, hiddens=None, hf_exact=False):
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or H
    hd = llama_head_dim(cfg)
    eps = cfg.get("rms_norm_eps", 1e-6)
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError("hidden_act must be silu")
    Bn, Tn = ids.shape
    cos, sin = llama_rope_tables(cfg, Tn, hf_exact)
    causal = torch.ones(Tn, Tn, dtype=torch.bool).tril()

    def lin(x, name):
        y = x @ w[name + ".weight"].t()
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps, hf_exact)
        q = lin(h, p + "self_attn.q_proj").reshape(Bn, Tn, H, hd).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").reshape(Bn, Tn, KV, hd).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").reshape(Bn, Tn, KV, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = k.repeat_interleave(H // KV, dim=1)  # repeat_kv: query head h uses kv head h // (H/KV)
        v = v.repeat_interleave(H // KV, dim=1)
        att = (q @ k.transpose(2, 3)) * hd**-0.5
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(Bn, Tn, H * hd)
        x = x + lin(y, p + "self_attn.o_proj")
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps, hf_exact)
        x = x + lin(F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        if hiddens is not None:
            hiddens[f"hidden.{l}"] = x
    x = rms_norm(x, w["model.norm.weight"], eps, hf_exact)
    if hiddens is not None:
        hiddens["final_norm"] = x
    tied = cfg.get("tie_word_embeddings", False)  # LlamaConfig's default is False
    head = w["model.embed_tokens.weight"] if tied else w["lm_head.weight"]
    return x @ head.t()


def forward(cfg, w, ids, hiddens=None, hf_exact=False):
    w = {n: t.to(torch.float64) for n, t in w.items()}
    if cfg["model_type"] == "gpt2":
        return gpt2_forward(cfg, w, ids, hiddens)
    if cfg["model_type"] == "llama":
        return llama_forward(cfg, w, ids, hiddens, hf_exact)
    raise ValueError(f"model_type {cfg['model_type']} not supported here")


# ----------------------------------------------------------------------------- model specs and weights


def gpt2_config(vocab_size, n_positions, n_embd, n_layer, n_head, dtype, bos, eos):
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": bos,
        "embd_pdrop": 0.1,
        "eos_token_id": eos,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_embd": n_embd,
        "n_head": n_head,
        "n_inner": None,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "tie_word_embeddings": True,
        "torch_dtype": _TORCH_NAME[dtype],
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def llama_config(vocab_size, hidden_size, intermediate_size, layers, heads, kv_heads, rope_theta,
                 rope_scaling, max_pos, eps, tied, dtype, attention_bias=False, mlp_bias=False):
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": attention_bias,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": hidden_size // heads,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_pos,
        "mlp_bias": mlp_bias,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": eps,
        "rope_scaling": rope_scaling,
        "rope_theta": float(rope_theta),
        "tie_word_embeddings": tied,
        "torch_dtype": _TORCH_NAME[dtype],
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def make_weights(cfg, seed):
    """Random weights in save_pretrained's state-dict order (module definition order), float32.
    Matrices std 0.2, embeddings std 0.5, biases std 0.1, norm weights 1 + 0.1 randn."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, std: torch.randn(*s, generator=g, dtype=torch.float64).float() * std
    norm = lambda n: 1.0 + rnd(n, std=0.1)
    w = {}
    if cfg["model_type"] == "gpt2":
        V, P, C = cfg["vocab_size"], cfg["n_positions"], cfg["n_embd"]
        I = cfg["n_inner"] or 4 * C
        w["transformer.wte.weight"] = rnd(V, C, std=0.5)
        w["transformer.wpe.weight"] = rnd(P, C, std=0.2)
        for l in range(cfg["n_layer"]):
            p = f"transformer.h.{l}."
            w[p + "ln_1.weight"], w[p + "ln_1.bias"] = norm(C), rnd(C, std=0.1)
            w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"] = rnd(C, 3 * C, std=0.2), rnd(3 * C, std=0.1)
            w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = rnd(C, C, std=0.2), rnd(C, std=0.1)
            w[p + "ln_2.weight"], w[p + "ln_2.bias"] = norm(C), rnd(C, std=0.1)
            w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = rnd(C, I, std=0.2), rnd(I, std=0.1)
            w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = rnd(I, C, std=0.2), rnd(C, std=0.1)
        w["transformer.ln_f.weight"], w["transformer.ln_f.bias"] = norm(C), rnd(C, std=0.1)
        # tied lm_head.weight is not saved by save_pretrained
    else:
        V, C, I = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
        H, KV, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], llama_head_dim(cfg)
        w["model.embed_tokens.weight"] = rnd(V, C, std=0.5)
        for l in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            for name, (o, i) in (("q", (H * hd, C)), ("k", (KV * hd, C)), ("v", (KV * hd, C)), ("o", (C, H * hd))):
                w[p + f"self_attn.{name}_proj.weight"] = rnd(o, i, std=0.2)
                if cfg["attention_bias"]:
                    w[p + f"self_attn.{name}_proj.bias"] = rnd(o, std=0.1)
            for name, (o, i) in (("gate", (I, C)), ("up", (I, C)), ("down", (C, I))):
                w[p + f"mlp.{name}_proj.weight"] = rnd(o, i, std=0.2)
                if cfg["mlp_bias"]:
                    w[p + f"mlp.{name}_proj.bias"] = rnd(o, std=0.1)
            w[p + "input_layernorm.weight"] = norm(C)
            w[p + "post_attention_layernorm.weight"] = norm(C)
        w["model.norm.weight"] = norm(C)
        if not cfg["tie_word_embeddings"]:
            w["lm_head.weight"] = rnd(V, C, std=0.2)
    return w


def parse_size(s):  # transformers.utils.convert_file_size_to_int for the decimal units
    for unit, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if s.upper().endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def save_pretrained(d, cfg, w, dtype, max_shard_size=None):
    """Write a checkpoint directory as PreTrainedModel.save_pretrained(d, max_shard_size=...) does.
    Returns the weights as stored (decoded back to float32)."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
           "transformers_version": TRANSFORMERS_VERSION}
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        f.write(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    enc = {n: encode(t, dtype) for n, t in w.items()}
    # greedy sharding in state-dict order, as transformers' shard_checkpoint / huggingface_hub do
    shards, cur, cur_size = [], {}, 0
    limit = parse_size(max_shard_size) if max_shard_size else None
    for n, (a, dt) in enc.items():
        if limit is not None and cur and cur_size + a.nbytes > limit:
            shards.append(cur)
            cur, cur_size = {}, 0
        cur[n] = (a, dt)
        cur_size += a.nbytes
    shards.append(cur)
    meta = {"format": "pt"}
    if len(shards) == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), shards[0], meta)
    else:
        weight_map = {}
        for i, sh in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(os.path.join(d, fn), sh, meta)
            weight_map.update({n: fn for n in sh})
        total = sum(a.nbytes for a, _ in enc.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    stored = read_checkpoint(d)
    assert set(stored) == set(w), (sorted(stored), sorted(w))
    return stored


def make_ids(V, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    ids[0, 3], ids[1, 7] = 0, V - 1  # both ends of the vocabulary
    return ids


# ----------------------------------------------------------------------------- transformers


def have_transformers():
    try:
        import transformers  # noqa: F401
        return True
    except ImportError:
        return False


def hf_logits(d, ids, want_hidden=False):
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.from_pretrained(d)
    # `dtype` since 4.56 (`torch_dtype` before, deprecated since). transformers 5 loads a checkpoint in
    # its stored dtype when none is named, so whatever was accepted, the model is made float64 below:
    # widening bf16, f16 or f32 weights is exact.
    model = None
    for dt_arg in ("dtype", "torch_dtype"):
        for extra in ({"attn_implementation": "sdpa"}, {}):
            try:
                model = AutoModelForCausalLM.from_pretrained(d, **{dt_arg: torch.float64}, **extra)
                break
            except (ValueError, TypeError, ImportError):
                continue
        if model is not None:
            break
    if model is None:
        raise RuntimeError(f"{d}: AutoModelForCausalLM.from_pretrained failed with both dtype arguments")
    got = {p.dtype for p in model.parameters()}
    if got != {torch.float64}:
        print(f"  note: transformers loaded {sorted(map(str, got))}; converted to float64")
        model = model.to(torch.float64)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=want_hidden)
    return out.logits.double(), (out.hidden_states if want_hidden else None)


# ----------------------------------------------------------------------------- modes


MODELS = {
    "gpt2": dict(dtype="F32", shard=None, seed=101, ids_seed=7),
    "llama": dict(dtype="BF16", shard="25KB", seed=202, ids_seed=8),
    "llama_bias": dict(dtype="F16", shard=None, seed=303, ids_seed=9),
}


def model_config(name, root=None):
    if name == "gpt2":
        eos = 299  # <|endoftext|> of the committed tokenizer.json
        tok = os.path.join(root, "gpt2", "tokenizer.json") if root else None
        if tok and os.path.exists(tok):
            with open(tok) as f:
                t = json.load(f)
            eos = next(a["id"] for a in t["added_tokens"] if a["content"] == "<|endoftext|>")
            assert max(t["model"]["vocab"].values()) < 300 and eos < 300
        elif tok:
            print(f"warning: {tok} missing (make it with `lmforge tokenizer train`, see --help)")
        return gpt2_config(300, 16, 24, 2, 3, "F32", eos, eos)
    if name == "llama":
        rs = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
              "original_max_position_embeddings": 8, "rope_type": "llama3"}
        return llama_config(67, 32, 72, 2, 4, 2, 500000.0, rs, 32, 1e-5, False, "BF16")
    if name == "llama_bias":
        rs = {"factor": 2.0, "rope_type": "linear"}
        return llama_config(53, 24, 40, 2, 3, 1, 10000.0, rs, 32, 1e-5, True, "F16",
                            attention_bias=True, mlp_bias=True)
    raise KeyError(name)


def generate(root):
    hf = have_transformers()
    print("transformers:", "available, cross-checking" if hf else "NOT available, plain PyTorch only")
    for name, spec in MODELS.items():
        cfg = model_config(name, root)
        d = os.path.join(root, name)
        stored = save_pretrained(d, cfg, make_weights(cfg, spec["seed"]), spec["dtype"], spec["shard"])
        ids = make_ids(cfg["vocab_size"], spec["ids_seed"])
        hid = {}
        logits = forward(cfg, stored, ids, hid)
        out = {"input_ids": encode(ids, "I32"), "logits": encode(logits, "F32")}
        out.update({k: encode(v, "F32") for k, v in hid.items()})
        ref = os.path.join(root, f"{name}.reference.safetensors")
        write_safetensors(ref, out)
        print(f"{name}: {len(stored)} tensors ({spec['dtype']}), logits {tuple(logits.shape)} "
              f"std {logits.std().item():.3f} max|.| {logits.abs().max().item():.3f} -> {ref}")
        if hf:
            hl, hh = hf_logits(d, ids, want_hidden=True)
            exact = forward(cfg, stored, ids, hf_exact=True)
            diff = (hl - exact).abs().max().item()
            print(f"  transformers vs plain (hf_exact): max |diff| {diff:.3e}; "
                  f"vs stored float64 reference: {(hl - logits).abs().max().item():.3e}")
            assert diff < 1e-6, f"{name}: transformers disagrees with the plain implementation ({diff})"
            L = len(hh) - 1
            for l in range(L - 1):  # hidden_states[l+1] is the residual after block l, the last one is normed
                dl = (hh[l + 1].double() - hid[f"hidden.{l}"]).abs().max().item()
                assert dl < 1e-5, f"{name}: hidden.{l} differs by {dl}"
            dn = (hh[L].double() - hid["final_norm"]).abs().max().item()
            assert dn < 1e-5, f"{name}: final_norm differs by {dn}"
    total = 0
    for dp, _, fns in os.walk(root):
        total += sum(os.path.getsize(os.path.join(dp, fn)) for fn in fns)
    print(f"{root}: {total} bytes in all")


def check_export(argv):
    import argparse

    ap = argparse.ArgumentParser(prog="hf_reference.py check-export")
    ap.add_argument("exported_dir")
    ap.add_argument("reference")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--plain", action="store_true", help="use the plain implementation even with transformers")
    a = ap.parse_args(argv)
    ref = read_safetensors(a.reference)
    ids = ref["input_ids"].long()
    if have_transformers() and not a.plain:
        how = "transformers"
        logits, _ = hf_logits(a.exported_dir, ids)
    else:
        how = "plain PyTorch"
        with open(os.path.join(a.exported_dir, "config.json")) as f:
            cfg = json.load(f)
        logits = forward(cfg, read_checkpoint(a.exported_dir), ids)
    if tuple(logits.shape) != tuple(ref["logits"].shape):
        print(f"shape mismatch: {tuple(logits.shape)} vs reference {tuple(ref['logits'].shape)}")
        return 1
    diff = (logits - ref["logits"].double()).abs().max().item()
    ok = diff <= a.atol
    print(f"{a.exported_dir} ({how}): max |logits - reference| = {diff:.3e} "
          f"({'OK' if ok else 'FAIL'}, atol {a.atol:g})")
    return 0 if ok else 1


def selftest():
    torch.manual_seed(0)
    # bf16 rounding: torch's conversion == manual round-to-nearest-even
    x = torch.randn(100000) * 3
    x[:4] = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 65504.0])  # ties
    assert np.array_equal(bf16_bits(x), bf16_bits_manual(x)), "bf16 rounding"
    assert bf16_bits(x[:2]).tolist() == [0x3F80, 0x3F82], "bf16 ties to even"
    # safetensors round trip of every dtype
    tmp = "/tmp/hf_reference_selftest.safetensors"
    y = torch.randn(3, 5)
    write_safetensors(tmp, {"a": encode(y, "BF16"), "b": encode(y, "F16"), "c": encode(y, "F32"),
                            "d": encode(torch.arange(6).view(2, 3), "I32")}, {"format": "pt"})
    r, meta, dts = read_safetensors(tmp, with_dtypes=True)
    assert meta == {"format": "pt"} and dts["a"] == ("BF16", (3, 5)) and dts["d"] == ("I32", (2, 3))
    assert torch.equal(r["a"], y.to(torch.bfloat16).float()) and torch.equal(r["b"], y.half().float())
    assert torch.equal(r["c"], y) and torch.equal(r["d"], torch.arange(6, dtype=torch.int32).view(2, 3))
    with open(tmp, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    assert n % 8 == 0
    os.remove(tmp)

    # llama3 frequencies: factor 1 leaves the default ones unchanged (all three branches blend to 1x)
    base = dict(hidden_size=64, num_attention_heads=2, rope_theta=500000.0)
    d0 = llama_inv_freq(base)
    expect = 1.0 / 500000.0 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    assert torch.allclose(d0, expect, rtol=1e-15, atol=0)
    l3 = lambda f, lo, hi, o: llama_inv_freq(dict(base, rope_scaling=dict(
        rope_type="llama3", factor=f, low_freq_factor=lo, high_freq_factor=hi, original_max_position_embeddings=o)))
    assert torch.allclose(l3(1.0, 1.0, 4.0, 8192), d0, rtol=1e-14, atol=0)
    assert torch.allclose(l3(1.0, 1.0, 1.0, 8192), d0, rtol=1e-14, atol=0)
    # factor 8, Llama 3.1's settings: high frequencies kept, low ones / 8, the middle smooth & monotone
    f = l3(8.0, 1.0, 4.0, 8192)
    wl = 2 * math.pi / d0
    hi_m, lo_m = wl < 8192 / 4, wl > 8192
    assert hi_m.any() and lo_m.any() and (~hi_m & ~lo_m).any()
    assert torch.equal(f[hi_m], d0[hi_m]) and torch.allclose(f[lo_m], d0[lo_m] / 8)
    mid = ~hi_m & ~lo_m
    assert ((f[mid] < d0[mid]) & (f[mid] > d0[mid] / 8)).all() and (f[1:] <= f[:-1]).all()
    # the fixture's llama3 setting (head_dim 8, original 8): freq 0 is in the smooth band, 1..3 are / 8
    cfg = model_config("llama")
    f, d0 = llama_inv_freq(cfg), llama_inv_freq(dict(cfg, rope_scaling=None))
    s = (8 / (2 * math.pi / d0[0]) - 1.0) / (4.0 - 1.0)
    assert torch.allclose(f[0], (1 - s) * d0[0] / 8 + s * d0[0]) and torch.allclose(f[1:], d0[1:] / 8)
    # linear: inv_freq / factor
    lin = llama_inv_freq(dict(base, rope_theta=10000.0, rope_scaling=dict(rope_type="linear", factor=2.0)))
    assert torch.allclose(lin, llama_inv_freq(dict(base, rope_theta=10000.0)) / 2, rtol=1e-15, atol=0)
    # float32 tables (transformers) are within float32 precision of the float64 ones
    c32, s32 = llama_rope_tables(cfg, 11, True)
    c64, s64 = llama_rope_tables(cfg, 11, False)
    assert (c32 - c64).abs().max() < 1e-6 and (s32 - s64).abs().max() < 1e-6

    # RoPE: the pair (i, i + hd/2) is rotated by t * inv_freq[i]; scores depend only on t_q - t_k
    hd, Tn = 8, 11
    rc = dict(hidden_size=hd, num_attention_heads=1, rope_theta=100.0)
    cos, sin = llama_rope_tables(rc, Tn, False)
    inv = llama_inv_freq(rc)
    v = torch.randn(hd, dtype=torch.float64)
    for t in range(Tn):
        r = apply_rope(v.view(1, 1, 1, hd), cos[t], sin[t]).view(hd)
        for i in range(hd // 2):
            a = t * inv[i]
            x1, x2 = v[i], v[i + hd // 2]
            assert torch.allclose(r[i], x1 * math.cos(a) - x2 * math.sin(a))
            assert torch.allclose(r[i + hd // 2], x2 * math.cos(a) + x1 * math.sin(a))
    q, k = torch.randn(1, 1, Tn, hd, dtype=torch.float64), torch.randn(1, 1, Tn, hd, dtype=torch.float64)
    qs = apply_rope(q[..., :1, :].expand(1, 1, Tn, hd), cos, sin)
    ks = apply_rope(k[..., :1, :].expand(1, 1, Tn, hd), cos, sin)
    sc = qs[0, 0] @ ks[0, 0].t()  # sc[m, n] = <R_m q, R_n k> depends on m - n only
    for m in range(1, Tn):
        for n in range(1, Tn):
            assert torch.allclose(sc[m, n], sc[m - 1, n - 1], atol=1e-12)
    assert torch.allclose(qs.norm(dim=-1), q[..., :1, :].norm(dim=-1).expand(1, 1, Tn))

    # Llama attention is causal and GQA shares kv heads: a later token never changes earlier logits
    cfg = model_config("llama_bias")
    w = make_weights(cfg, 1)
    ids = make_ids(cfg["vocab_size"], 1)
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % cfg["vocab_size"]
    a, b = forward(cfg, w, ids), forward(cfg, w, ids2)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-12) and not torch.allclose(a[:, -1], b[:, -1])
    # GQA with KV == H through explicitly replicated kv heads gives the same logits
    cfgm = model_config("llama")
    wm = make_weights(cfgm, 2)
    H, KV, hdm = 4, 2, 8
    wf = dict(wm)
    for l in range(2):
        for nm in ("k", "v"):
            W = wm[f"model.layers.{l}.self_attn.{nm}_proj.weight"].view(KV, hdm, -1)
            wf[f"model.layers.{l}.self_attn.{nm}_proj.weight"] = W.repeat_interleave(H // KV, 0).reshape(H * hdm, -1)
    idm = make_ids(67, 2)
    assert torch.allclose(forward(cfgm, wm, idm), forward(dict(cfgm, num_key_value_heads=4), wf, idm), atol=1e-12)
    # hf_exact differs from pure float64 only at float32-precision level
    da = (forward(cfgm, wm, idm, hf_exact=True) - forward(cfgm, wm, idm)).abs().max().item()
    assert 0 < da < 1e-4, da

    # GPT-2 against tools/torch_reference.py (lmforge's reference, same HF names, eps 1e-5)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference as tr

    cfg = model_config("gpt2")
    w = {n: t.double() for n, t in make_weights(cfg, 3).items()}
    ids = make_ids(300, 3)
    tr.B, tr.T = ids.shape
    acts = {}
    tr.forward(w, ids, ids, cfg["n_layer"], cfg["n_head"], acts)
    hid = {}
    lg = forward(cfg, w, ids, hid)
    dg = (lg - acts["logits"]).abs().max().item()
    assert dg < 1e-10, dg
    assert torch.allclose(hid["hidden.1"], acts["act.h.1"], atol=1e-10)
    print(f"selftest OK (GPT-2 vs torch_reference.py: {dg:.1e}; Llama hf_exact vs float64: {da:.1e})")


def main(argv):
    if len(argv) >= 1 and argv[0] == "generate":
        generate(argv[1] if len(argv) > 1 else "tests/fixtures/hf_tiny")
        return 0
    if len(argv) >= 1 and argv[0] == "check-export":
        return check_export(argv[1:])
    if len(argv) == 1 and argv[0] == "selftest":
        selftest()
        return 0
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
