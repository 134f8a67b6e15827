"""A built-in Qwen3 (dense) in plain PyTorch: train.py's fallback when transformers' Qwen3ForCausalLM
cannot be built. Same parameter names as transformers' (model.embed_tokens, model.layers.N.self_attn.
q_proj/k_proj/v_proj/o_proj/q_norm/k_norm, input_layernorm, post_attention_layernorm, mlp.gate_proj/
up_proj/down_proj, model.norm; the output head is the embedding), the same computation as llama.cpp's
qwen3: RMSNorm (x * rsqrt(mean(x^2) + eps) * w), per-head RMSNorm of q and k before RoPE, RoPE in the
NEOX (rotate-half) layout with theta, causal GQA attention scaled by 1/sqrt(head_dim), SwiGLU.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, hp, eps):
        super().__init__()
        H, nh, nkv, hd = hp["hidden"], hp["heads"], hp["kv_heads"], hp["head_dim"]
        self.nh, self.nkv, self.hd = nh, nkv, hd
        self.q_proj = nn.Linear(H, nh * hd, bias=False)
        self.k_proj = nn.Linear(H, nkv * hd, bias=False)
        self.v_proj = nn.Linear(H, nkv * hd, bias=False)
        self.o_proj = nn.Linear(nh * hd, H, bias=False)
        self.q_norm = RMSNorm(hd, eps)
        self.k_norm = RMSNorm(hd, eps)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.nh, self.hd)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.nkv, self.hd)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = (q * cos + rotate_half(q) * sin).to(v.dtype)
        k = (k * cos + rotate_half(k) * sin).to(v.dtype)
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, H, ff):
        super().__init__()
        self.gate_proj = nn.Linear(H, ff, bias=False)
        self.up_proj = nn.Linear(H, ff, bias=False)
        self.down_proj = nn.Linear(ff, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, hp, eps):
        super().__init__()
        self.input_layernorm = RMSNorm(hp["hidden"], eps)
        self.self_attn = Attention(hp, eps)
        self.post_attention_layernorm = RMSNorm(hp["hidden"], eps)
        self.mlp = MLP(hp["hidden"], hp["ffn"])

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, vocab, hp, eps):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hp["hidden"])
        self.layers = nn.ModuleList([Layer(hp, eps) for _ in range(hp["layers"])])
        self.norm = RMSNorm(hp["hidden"], eps)


class Qwen3(nn.Module):
    def __init__(self, vocab, hp, theta=1e6, eps=1e-6):
        super().__init__()
        self.model = Body(vocab, hp, eps)
        self.hd = hp["head_dim"]
        self.theta = theta
        for n, p in self.named_parameters():
            if p.ndim >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        B, T = ids.shape
        inv = 1.0 / (self.theta ** (torch.arange(0, self.hd, 2, device=ids.device, dtype=torch.float32) / self.hd))
        ang = torch.arange(T, device=ids.device, dtype=torch.float32)[:, None] * inv[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        cos, sin = ang.cos()[None, None], ang.sin()[None, None]
        x = self.model.embed_tokens(ids)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight)
