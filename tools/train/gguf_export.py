#!/usr/bin/env python3
"""Qwen3 weights (Hugging Face names, numpy arrays) to a GGUF v3 file that trove and llama.cpp load.

Pure Python + numpy (runs on the device inside the training call, and here in the tests). The metadata
is what `trove mkmodel` writes (engine/gguf/synthetic.cpp) for a dense Qwen3, without the
trove.synthetic keys: the model is real, not synthetic. The tokenizer arrays come from the Qwen3
tokenizer.json in tools/train/tokenizer/ (built as synthetic.cpp's load_tokenizer builds them).

Tensor types: 1-D tensors (norms) F32; token_embd (tied: it is the output head too) --embd-type
(Q4_K default, or Q8_0 / F16 / F32); every other matrix --type (Q8_0 default, or F16 / F32).
--dequantized writes F32 tensors holding exactly the values the quantized file holds (the exact
reference llama.cpp runs in f32 — as `trove mkmodel --dequantized`).

  as a module:  export_gguf(weights, hp, out, name=..., description=..., template="qwen3-coder")
  random model: gguf_export.py --random --out M.gguf [--layers 2] [--seed 1] [--dequantized]
  self-test:    gguf_export.py --self-test   (quantizers round-trip through an independent decoder)
"""
import argparse
import json
import lzma
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOKENIZER_DIR = os.path.join(HERE, "tokenizer")
CODER_TEMPLATE = os.path.join(ROOT, "tests/fixtures/qwen3-coder/chat_template.jinja")
N_VOCAB = 151936

# ggml type ids and block geometry.
F32, F16, Q8_0, Q4_K = 0, 1, 8, 12
TYPES = {"F32": F32, "F16": F16, "Q8_0": Q8_0, "Q4_K": Q4_K}
BLOCK = {F32: (1, 4), F16: (1, 2), Q8_0: (32, 34), Q4_K: (256, 144)}
# llama.cpp's llama_ftype for general.file_type (synthetic.cpp's file_type_id): the matrices' type.
FILE_TYPE = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_K": 14}

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32V, BOOL, STR, ARR, U64, I64, F64 = range(13)


# ------------------------------------------------------------------------------------------------
# Quantizers (rows of float32 → bytes) and an independent decoder of the bytes (for the self-test
# and for --dequantized).

def quant_q8_0(x):
    """x: (rows, n), n % 32 == 0 → (rows, n/32*34) uint8. d = amax/127 (f16), q = round(x/d)."""
    rows, n = x.shape
    b = x.reshape(rows, n // 32, 32).astype(np.float32)
    amax = np.abs(b).max(axis=2)
    d = (amax / 127.0).astype(np.float16)
    d32 = d.astype(np.float32)
    inv = np.divide(1.0, d32, out=np.zeros_like(d32), where=d32 > 0)
    q = np.clip(np.rint(b * inv[..., None]), -127, 127).astype(np.int8)
    out = np.empty((rows, n // 32, 34), np.uint8)
    out[..., 0:2] = d.view(np.uint8).reshape(rows, n // 32, 2)
    out[..., 2:] = q.view(np.uint8)
    return out.reshape(rows, -1)


def dequant_q8_0(raw, n):
    rows = raw.shape[0]
    b = raw.reshape(rows, n // 32, 34)
    d = b[..., 0:2].copy().view(np.float16).astype(np.float32)  # (rows, nb, 1)
    q = b[..., 2:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(rows, n)


def quant_q4_k(x):
    """x: (rows, n), n % 256 == 0 → (rows, n/256*144) uint8 in ggml's block_q4_K layout:
    f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales/mins, 128 bytes of 4-bit values;
    value = d * sc[j] * q - dmin * m[j] for sub-block j (32 values)."""
    rows, n = x.shape
    nb = n // 256
    b = x.reshape(rows, nb, 8, 32).astype(np.float32)
    mn = np.minimum(b.min(axis=3), 0.0)              # (rows, nb, 8), <= 0
    mx = b.max(axis=3)
    mins = -mn
    # Mins first (ceil: every value + its sub-block's min is >= 0), then each sub-block's step from the
    # range it really needs above that min (ceil: no clipping at the top; a flat sub-block beside a
    # spike still gets a step of d rather than none).
    dmin = (mins.max(axis=2) / 63.0).astype(np.float16)  # (rows, nb)
    dmin32 = dmin.astype(np.float32)[..., None]
    lm = np.clip(np.ceil(np.divide(mins, dmin32, out=np.zeros_like(mins), where=dmin32 > 0) - 1e-4), 0, 63).astype(np.uint8)
    need = np.maximum(mx + dmin32 * lm.astype(np.float32), 0.0) / 15.0
    d = (need.max(axis=2) / 63.0).astype(np.float16)
    d32 = d.astype(np.float32)[..., None]
    ls = np.clip(np.ceil(np.divide(need, d32, out=np.zeros_like(need), where=d32 > 0) - 1e-4), 0, 63).astype(np.uint8)
    eff_s = d32 * ls.astype(np.float32)
    eff_m = dmin32 * lm.astype(np.float32)
    qv = np.divide(b + eff_m[..., None], eff_s[..., None], out=np.zeros_like(b), where=eff_s[..., None] > 0)
    q = np.clip(np.rint(qv), 0, 15).astype(np.uint8)     # (rows, nb, 8, 32)
    sc = np.zeros((rows, nb, 12), np.uint8)
    sc[..., 0:4] = ls[..., 0:4] | ((ls[..., 4:8] >> 4) << 6)
    sc[..., 4:8] = lm[..., 0:4] | ((lm[..., 4:8] >> 4) << 6)
    sc[..., 8:12] = (ls[..., 4:8] & 0xF) | ((lm[..., 4:8] & 0xF) << 4)
    qs = (q[:, :, 0::2, :] | (q[:, :, 1::2, :] << 4)).reshape(rows, nb, 128)
    out = np.empty((rows, nb, 144), np.uint8)
    out[..., 0:2] = d.view(np.uint8).reshape(rows, nb, 2)
    out[..., 2:4] = dmin.view(np.uint8).reshape(rows, nb, 2)
    out[..., 4:16] = sc
    out[..., 16:] = qs
    return out.reshape(rows, -1)


def dequant_q4_k(raw, n):
    """ggml's dequantize_row_q4_K, written from its get_scale_min_k4 (not from the packing above)."""
    rows = raw.shape[0]
    nb = n // 256
    b = raw.reshape(rows, nb, 144)
    d = b[..., 0:2].copy().view(np.float16).astype(np.float32)[..., 0]
    dmin = b[..., 2:4].copy().view(np.float16).astype(np.float32)[..., 0]
    q = b[..., 4:16].astype(np.int32)
    out = np.empty((rows, nb, 256), np.float32)
    for j in range(8):
        if j < 4:
            s, m = q[..., j] & 63, q[..., j + 4] & 63
        else:
            s = (q[..., j + 4] & 0xF) | ((q[..., j - 4] >> 6) << 4)
            m = (q[..., j + 4] >> 4) | ((q[..., j] >> 6) << 4)
        chunk = b[..., 16 + 32 * (j // 2): 16 + 32 * (j // 2) + 32].astype(np.int32)
        vals = (chunk & 0xF) if j % 2 == 0 else (chunk >> 4)
        out[..., 32 * j: 32 * j + 32] = (d * s)[..., None] * vals - (dmin * m)[..., None]
    return out.reshape(rows, n)


def encode(x, ggml_type):
    """2-D float32 (rows, ne0) → raw bytes of that type."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if ggml_type == F32:
        return x.tobytes()
    if ggml_type == F16:
        return x.astype(np.float16).tobytes()
    rows = x.shape[0]
    step = max(1, (1 << 22) // x.shape[1])  # bounded memory: 4M values at a time
    f = quant_q8_0 if ggml_type == Q8_0 else quant_q4_k
    return b"".join(f(x[r:r + step]).tobytes() for r in range(0, rows, step))


def decode(raw, ggml_type, rows, n):
    if ggml_type == F32:
        return np.frombuffer(raw, np.float32).reshape(rows, n).copy()
    if ggml_type == F16:
        return np.frombuffer(raw, np.float16).reshape(rows, n).astype(np.float32)
    a = np.frombuffer(raw, np.uint8).reshape(rows, -1)
    return dequant_q8_0(a, n) if ggml_type == Q8_0 else dequant_q4_k(a, n)


# ------------------------------------------------------------------------------------------------
# Tokenizer metadata (as synthetic.cpp's load_tokenizer builds it).

def load_tokenizer(n_vocab=N_VOCAB):
    with lzma.open(os.path.join(TOKENIZER_DIR, "tokenizer.json.xz"), "rt", encoding="utf-8") as f:
        tok = json.load(f)
    cfg = json.load(open(os.path.join(TOKENIZER_DIR, "tokenizer_config.json"), encoding="utf-8"))
    tokens, types = [None] * n_vocab, [5] * n_vocab  # UNUSED
    for piece, i in tok["model"]["vocab"].items():
        tokens[i], types[i] = piece, 1  # NORMAL
    for a in tok["added_tokens"]:
        c = a["content"]
        looks_special = len(c) >= 4 and c.startswith("<|") and c.endswith("|>")
        tokens[a["id"]], types[a["id"]] = c, (3 if a["special"] or looks_special else 4)  # CONTROL / USER_DEFINED
    for i in range(n_vocab):
        if tokens[i] is None:
            tokens[i] = f"[PAD{i}]"
    merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in tok["model"]["merges"]]
    return tokens, types, merges, cfg["chat_template"]


# ------------------------------------------------------------------------------------------------
# GGUF v3 writer.

class Writer:
    def __init__(self):
        self.kv = []
        self.tensors = []  # (name, ne list, ggml type, bytes)

    def add(self, key, vtype, value):
        self.kv.append((key, vtype, value))

    @staticmethod
    def _str(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def _value(self, vtype, v):
        if vtype == STR:
            return self._str(v)
        if vtype == ARR:
            et, items = v
            if et == STR:
                return struct.pack("<IQ", et, len(items)) + b"".join(self._str(s) for s in items)
            fmt = {I32: "i", U32: "I"}[et]
            return struct.pack("<IQ", et, len(items)) + struct.pack(f"<{len(items)}{fmt}", *items)
        fmt = {U32: "<I", I32: "<i", F32V: "<f", BOOL: "<?", U64: "<Q"}[vtype]
        return struct.pack(fmt, v)

    def tensor(self, name, ne, ggml_type, data):
        blk, size = BLOCK[ggml_type]
        n = int(np.prod(ne))
        if ne[0] % blk or len(data) != n // blk * size:
            raise ValueError(f"tensor {name}: {len(data)} bytes do not fit shape {ne} of type {ggml_type}")
        self.tensors.append((name, list(ne), ggml_type, data))

    def write(self, path, align=32):
        head = [b"GGUF", struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))]
        for k, t, v in self.kv:
            head += [self._str(k), struct.pack("<I", t), self._value(t, v)]
        off = 0
        offsets = []
        for name, ne, t, data in self.tensors:
            off = (off + align - 1) // align * align
            offsets.append(off)
            head += [self._str(name), struct.pack("<I", len(ne)), struct.pack(f"<{len(ne)}Q", *ne),
                     struct.pack("<IQ", t, off)]
            off += len(data)
        h = b"".join(head)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(h)
            f.write(b"\0" * ((-len(h)) % align))
            pos = 0
            for (name, ne, t, data), o in zip(self.tensors, offsets):
                f.write(b"\0" * (o - pos))
                f.write(data)
                pos = o + len(data)
        os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# Qwen3 (dense, tied embeddings) export.

def gguf_name(hf):
    """Hugging Face Qwen3 parameter name → GGUF tensor name (None: not exported)."""
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return None  # tied to the embedding
    p = hf.split(".")
    if p[0] == "model" and p[1] == "layers":
        rest = ".".join(p[3:])
        m = {"input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "ffn_norm",
             "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
             "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
             "self_attn.q_norm.weight": "attn_q_norm", "self_attn.k_norm.weight": "attn_k_norm",
             "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down"}
        if rest in m:
            return f"blk.{p[2]}.{m[rest]}.weight"
    raise ValueError(f"unexpected Qwen3 parameter '{hf}' (only dense Qwen3 with tied embeddings is exported)")


def export_gguf(weights, hp, out, name, description, template="qwen3-coder", embd_type="Q4_K", mat_type="Q8_0",
                dequantized=False, extra_kv=None):
    """weights: {hf name: float32 ndarray in Hugging Face layout ([out, in] for Linear)}.
    hp: hidden, layers, heads, kv_heads, head_dim, ffn, ctx, rope_theta, rms_eps.
    Returns {tensor name: (type name, bytes)} and writes `out`."""
    tokens, types, merges, qwen3_template = load_tokenizer()
    chat_template = open(CODER_TEMPLATE, encoding="utf-8").read() if template == "qwen3-coder" else qwen3_template
    w = Writer()
    a = "qwen3"
    w.add("general.architecture", STR, a)
    w.add("general.name", STR, name)
    w.add("general.description", STR, description)
    w.add("general.file_type", U32, FILE_TYPE["F32" if dequantized else mat_type])
    if not dequantized and mat_type not in ("F32", "F16"):
        w.add("general.quantization_version", U32, 2)
    w.add(a + ".context_length", U32, hp["ctx"])
    w.add(a + ".embedding_length", U32, hp["hidden"])
    w.add(a + ".block_count", U32, hp["layers"])
    w.add(a + ".feed_forward_length", U32, hp["ffn"])
    w.add(a + ".attention.head_count", U32, hp["heads"])
    w.add(a + ".attention.head_count_kv", U32, hp["kv_heads"])
    w.add(a + ".attention.key_length", U32, hp["head_dim"])
    w.add(a + ".attention.value_length", U32, hp["head_dim"])
    w.add(a + ".rope.freq_base", F32V, float(hp["rope_theta"]))
    w.add(a + ".attention.layer_norm_rms_epsilon", F32V, float(hp["rms_eps"]))
    w.add("tokenizer.ggml.model", STR, "gpt2")
    w.add("tokenizer.ggml.pre", STR, "qwen2")
    w.add("tokenizer.ggml.tokens", ARR, (STR, tokens))
    w.add("tokenizer.ggml.token_type", ARR, (I32, types))
    w.add("tokenizer.ggml.merges", ARR, (STR, merges))
    w.add("tokenizer.ggml.eos_token_id", U32, 151645)      # <|im_end|>
    w.add("tokenizer.ggml.padding_token_id", U32, 151643)  # <|endoftext|>
    w.add("tokenizer.ggml.bos_token_id", U32, 151643)
    w.add("tokenizer.ggml.add_bos_token", BOOL, False)
    w.add("tokenizer.chat_template", STR, chat_template)
    for k, (t, v) in (extra_kv or {}).items():
        w.add(k, {"str": STR, "u32": U32, "f32": F32V}[t], v)

    named = {}
    for hf, arr in weights.items():
        g = gguf_name(hf)
        if g is not None:
            named[g] = np.asarray(arr, dtype=np.float32)
    order = ["token_embd.weight"]
    for i in range(hp["layers"]):
        order += [f"blk.{i}.{s}.weight" for s in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                  "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate", "ffn_up",
                                                  "ffn_down")]
    order.append("output_norm.weight")
    missing = [n for n in order if n not in named]
    if missing or len(named) != len(order):
        raise ValueError(f"weights do not match the Qwen3 shape: missing {missing[:5]}, "
                         f"unexpected {sorted(set(named) - set(order))[:5]}")
    report = {}
    for n in order:
        x = named[n]
        if x.ndim == 1:
            t = F32
            rows = x.reshape(1, -1)
        else:
            t = TYPES[embd_type if n == "token_embd.weight" else mat_type]
            rows = x
        ne = list(reversed(x.shape))  # GGUF: ne[0] is the innermost (input) dimension
        data = encode(rows, t)
        if dequantized and t != F32:
            data = decode(data, t, rows.shape[0], rows.shape[1]).tobytes()
            t = F32
        w.tensor(n, ne, t, data)
        report[n] = ({v: k for k, v in TYPES.items()}[t], len(data))
    w.write(out)
    return report


def random_weights(hp, seed):
    """Random Qwen3 weights shaped like the fixture models, with peaked logits (std ~32) that depend on
    every layer: the layers' outputs dominate the residual stream, so a tensor read wrongly shows."""
    rng = np.random.default_rng(seed)
    H, L, nh, nkv, hd, ff = hp["hidden"], hp["layers"], hp["heads"], hp["kv_heads"], hp["head_dim"], hp["ffn"]
    u = lambda shape, half: rng.uniform(-half, half, size=shape).astype(np.float32)
    vp = lambda o, i, k=1.0: u((o, i), k * np.sqrt(3.0 / i))
    w = {"model.embed_tokens.weight": u((N_VOCAB, H), 2.0 * np.sqrt(3.0)),
         "model.norm.weight": 1.0 + u((H,), 0.25)}
    for i in range(L):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1.0 + u((H,), 0.25)
        w[p + "post_attention_layernorm.weight"] = 1.0 + u((H,), 0.25)
        w[p + "self_attn.q_proj.weight"] = vp(nh * hd, H)
        w[p + "self_attn.k_proj.weight"] = vp(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"] = vp(nkv * hd, H)
        w[p + "self_attn.o_proj.weight"] = vp(H, nh * hd, 6.0)
        w[p + "self_attn.q_norm.weight"] = 1.0 + u((hd,), 0.25)
        w[p + "self_attn.k_norm.weight"] = 1.0 + u((hd,), 0.25)
        w[p + "mlp.gate_proj.weight"] = vp(ff, H)
        w[p + "mlp.up_proj.weight"] = vp(ff, H)
        w[p + "mlp.down_proj.weight"] = vp(H, ff, 6.0)
    return w


FIXTURE_SHAPE = dict(hidden=256, layers=6, heads=4, kv_heads=2, head_dim=128, ffn=768, ctx=4096,
                     rope_theta=1000000.0, rms_eps=1e-6)


def self_test():
    rng = np.random.default_rng(5)
    fails = 0
    for tname, t, sub_bound in (("Q8_0", Q8_0, 1.0 / 127), ("Q4_K", Q4_K, 1.0 / 15 * 0.75)):
        for case in ("normal", "positive", "zeros", "spiky"):
            bound = sub_bound
            x = rng.normal(size=(64, 512)).astype(np.float32)
            if case == "positive":
                x = np.abs(x) + 0.5
            elif case == "zeros":
                x[:, :256] = 0
            elif case == "spiky":
                x[:, ::97] *= 40
            y = decode(encode(x, t), t, 64, 512)
            # Error per 32-value sub-block, relative to its range: half a step is 1/254 (Q8_0) and 1/30
            # (Q4_K); "spiky" puts flat sub-blocks beside 40x outliers in the same 256-value super-block.
            # There a flat sub-block's step is a multiple of the super-block's d (1/63 of the outlier's
            # step), so its bound is twice the plain one.
            blk = 32
            if case == "spiky" and t == Q4_K:
                bound = 2 * sub_bound
            xb, yb = x.reshape(64, -1, blk), y.reshape(64, -1, blk)
            rng_b = (xb.max(axis=2) - np.minimum(xb.min(axis=2), 0)) if t == Q4_K else np.abs(xb).max(axis=2)
            err = np.abs(xb - yb).max(axis=2)
            worst = float((err / np.maximum(rng_b, 1e-12)).max())
            ok = np.isfinite(y).all() and worst <= bound
            fails += not ok
            print(f"{tname} {case:9s} worst error / block range {worst:.4f} (bound {bound:.4f}) {'ok' if ok else 'FAIL'}")
    tokens, types, merges, _ = load_tokenizer()
    ok = len(tokens) == N_VOCAB and tokens[151645] == "<|im_end|>" and types[151645] == 3 and len(merges) > 150000
    fails += not ok
    print(f"tokenizer: {len(tokens)} tokens, {len(merges)} merges, <|im_end|> control: {'ok' if ok else 'FAIL'}")
    return fails


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", action="store_true", help="export random weights of the fixture shape")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dequantized", action="store_true")
    ap.add_argument("--embd-type", default="Q4_K", choices=TYPES)
    ap.add_argument("--type", default="Q8_0", choices=TYPES)
    a = ap.parse_args()
    if a.self_test:
        sys.exit(1 if self_test() else 0)
    if not (a.random and a.out):
        ap.error("give --random --out FILE, or --self-test")
    hp = dict(FIXTURE_SHAPE, layers=a.layers)
    rep = export_gguf(random_weights(hp, a.seed), hp, a.out, name="random qwen3 (gguf_export test)",
                      description="Random weights written by tools/train/gguf_export.py --random (a test file).",
                      embd_type=a.embd_type, mat_type=a.type, dequantized=a.dequantized)
    print(f"wrote {a.out}: {len(rep)} tensors, {os.path.getsize(a.out) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
