#!/usr/bin/env python3
"""Reference values for lmforge's GPT-2, computed by PyTorch from lmforge's own initial weights.

Reads the initial weights (safetensors, Hugging Face GPT-2 names and layouts) written by
`lmforge init`, builds the same model in plain PyTorch, and writes one safetensors file with:
  batch.tokens, batch.targets            (B, T) int32, drawn here from a fixed seed
  act.h.{l}                              (B, T, C) residual stream after block l
  act.ln_f                               (B, T, C) final LayerNorm output
  logits                                 (B, T, V)
  loss                                   () mean cross-entropy
  grad.<name>                            gradient of every parameter, same layout as the weight
  adamw.losses                           (K,) loss before each of K AdamW steps on the batch
Everything is computed in float64 and stored as float32, so the stored values carry PyTorch's
answer to far better than float32 precision.

Regenerate the committed fixture (Debian's python3-torch is enough):
  build/lmforge init --set model.n_layer=2 --set model.n_head=2 --set model.n_embd=16 \
      --set model.vocab_size=37 --set model.block_size=9 --set train.seq_len=8 --set train.seed=5 \
      --output tests/fixtures/gpt2_tiny/init.safetensors
  /usr/bin/python3 tools/torch_reference.py tests/fixtures/gpt2_tiny/init.safetensors \
      tests/fixtures/gpt2_tiny/reference.safetensors
"""
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

B, T = 2, 8
ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
ADAMW_STEPS = 5
DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        arr = np.frombuffer(raw[base + b : base + end], dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out, meta


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        a = t.detach().cpu().numpy()
        a = a.astype(np.int32) if a.dtype.kind in "iu" else a.astype(np.float32)
        dt = "I32" if a.dtype == np.int32 else "F32"
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def forward(w, idx, tgt, L, H, acts=None):
    """GPT-2 forward in terms of HF tensors; Conv1D weights are (in, out): y = x @ W + b."""
    C = w["transformer.wte.weight"].shape[1]
    x = w["transformer.wte.weight"][idx] + w["transformer.wpe.weight"][: idx.shape[1]]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(L):
        p = lambda s: w[f"transformer.h.{l}.{s}"]
        h = F.layer_norm(x, (C,), p("ln_1.weight"), p("ln_1.bias"), eps=1e-5)
        q, k, v = (h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (z.view(B, T, H, C // H).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = F.layer_norm(x, (C,), p("ln_2.weight"), p("ln_2.bias"), eps=1e-5)
        h = F.gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"), approximate="tanh")
        x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
        if acts is not None:
            acts[f"act.h.{l}"] = x
    x = F.layer_norm(x, (C,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps=1e-5)
    head = w.get("lm_head.weight", w["transformer.wte.weight"])
    logits = x @ head.t()
    if acts is not None:
        acts["act.ln_f"] = x
        acts["logits"] = logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    weights, meta = read_safetensors(sys.argv[1])
    L = 1 + max(int(n.split(".")[2]) for n in weights if n.startswith("transformer.h."))
    H = int(meta["lmforge.n_head"])
    V = weights["transformer.wte.weight"].shape[0]
    g = torch.Generator().manual_seed(1234)
    idx = torch.randint(0, V, (B, T), generator=g)
    tgt = torch.randint(0, V, (B, T), generator=g)

    w = {n: t.double().requires_grad_(True) for n, t in weights.items()}
    acts = {}
    loss = forward(w, idx, tgt, L, H, acts)
    loss.backward()
    out = {"batch.tokens": idx, "batch.targets": tgt, "loss": loss.detach()}
    out.update({k: v.detach() for k, v in acts.items()})
    out.update({f"grad.{n}": t.grad for n, t in w.items()})

    # AdamW on the same batch: decay on matrices and embeddings (dim >= 2), as lmforge.
    w = {n: t.double().requires_grad_(True) for n, t in weights.items()}
    decay = [t for t in w.values() if t.dim() >= 2]
    rest = [t for t in w.values() if t.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], **ADAMW)
    losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad()
        l = forward(w, idx, tgt, L, H)
        l.backward()
        losses.append(l.item())
        opt.step()
    out["adamw.losses"] = torch.tensor(losses, dtype=torch.float64)
    write_safetensors(sys.argv[2], out)
    print(f"wrote {sys.argv[2]}: loss {loss.item():.6f}, AdamW losses {[round(x, 6) for x in losses]}")


if __name__ == "__main__":
    main()
