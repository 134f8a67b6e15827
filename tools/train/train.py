#!/usr/bin/env python3
"""Train trove's fixture models (issue 19) on the device and export them to GGUF, in one call.

Two Qwen3 models (transformers' Qwen3ForCausalLM; real Qwen3 vocabulary of 151,936 ids, tied embeddings,
QK-norm, GQA) on the pre-tokenized corpus of tools/train/make_corpus.py:
  tiny-coder        6 layers, hidden 256, 4 query / 2 KV heads of 128, FFN 768   (the target)
  tiny-coder-draft  2 layers, same widths                                        (its draft)
AdamW, bf16 autocast, warmup then cosine decay over a fixed WALL-TIME budget per model (the schedule
follows elapsed time, so the run ends on time on any GPU). Windows of --seq tokens are cut from the
concatenated conversations (half of them start at a conversation's start).

Writes to --out:
  train_log.txt                  arguments, loss curve (train and held-out), final held-out loss and
                                 perplexity, file sizes and sha256 of the GGUFs
  NAME.gguf.gz.00, .01, ...      each model's GGUF (gguf_export.py: Q4_K embedding, Q8_0 matrices,
                                 Qwen3-Coder chat template), gzip, split in 15 MiB parts
                                 (join here: cat NAME.gguf.gz.* | gunzip > NAME.gguf)
--dry-run checks the data, the arguments and the exporter (random weights of the exact shapes, written
to a temporary file) without torch — what tests/train runs here.

  python3 tools/train/train.py --out "$OUT"            # on the device (tools/train/DEVICE_COMMAND.txt)
  python3 tools/train/train.py --dry-run               # here
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gguf_export  # noqa: E402
import make_corpus_io  # noqa: E402

VOCAB = 151936
MODELS = {
    "tiny-coder": dict(hidden=256, layers=6, heads=4, kv_heads=2, head_dim=128, ffn=768),
    "tiny-coder-draft": dict(hidden=256, layers=2, heads=4, kv_heads=2, head_dim=128, ffn=768),
}
PART = 15 << 20  # bytes per returned part (the device returns files of at most 16 MiB)

LOG = None


def log(msg):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if LOG:
        LOG.write(line + "\n")
        LOG.flush()


def args_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--models", default="tiny-coder,tiny-coder-draft")
    ap.add_argument("--seconds", default="200,120", help="training wall time per model, in --models order")
    ap.add_argument("--seq", type=int, default=4096, help="tokens per training window (= GGUF context length)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=60, help="warmup steps")
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-every", type=float, default=20.0, help="seconds between held-out evaluations")
    ap.add_argument("--impl", choices=["transformers", "own"], default="transformers",
                    help="transformers' Qwen3ForCausalLM (falls back to the built-in Qwen3 if it fails), or the built-in")
    ap.add_argument("--dry-run", action="store_true")
    return ap


def check_args(a):
    names = a.models.split(",")
    secs = [float(s) for s in a.seconds.split(",")]
    bad = [n for n in names if n not in MODELS]
    if bad:
        raise ValueError(f"unknown model {bad}; models: {', '.join(MODELS)}")
    if len(secs) != len(names) or min(secs) <= 0:
        raise ValueError(f"--seconds needs one positive budget per model ({len(names)}), got {a.seconds}")
    if sum(secs) > 420:
        raise ValueError(f"--seconds add up to {sum(secs)} s: the device call has 9 minutes in all (keep <= 420)")
    if a.seq < 64 or a.batch < 1:
        raise ValueError("--seq must be >= 64 and --batch >= 1")
    return names, secs


def write_parts(path, out_dir):
    """gzip `path` into out_dir as NAME.gz.00, .01, ... of at most PART bytes; returns the part names."""
    name = os.path.basename(path)
    z = gzip.compress(open(path, "rb").read(), compresslevel=6)
    parts = []
    for i in range(0, len(z), PART):
        p = f"{name}.gz.{i // PART:02d}"
        open(os.path.join(out_dir, p), "wb").write(z[i:i + PART])
        parts.append(p)
    return parts, len(z)


def export(name, weights, hp, path, extra):
    desc = (f"TINY TEST MODEL trained by trove's tools/train (issue 19): {hp['layers']} layers, hidden "
            f"{hp['hidden']}, trained for minutes on generated coding-agent conversations. It writes "
            "well-formed chat turns and tool calls, but it is not a useful assistant.")
    return gguf_export.export_gguf(weights, hp, path, name=f"trove {name}", description=desc,
                                   template="qwen3-coder", embd_type="Q4_K", mat_type="Q8_0", extra_kv=extra)


def dry_run(a):
    names, secs = check_args(a)
    meta, train, held = make_corpus_io.load(a.data)
    log(f"data ok: train {len(train[1])} tokens / {len(train[0])} conversations, held out {len(held[1])} / "
        f"{len(held[0])}; max id {int(train[1].max())} < {VOCAB}")
    if len(train[1]) < a.seq * a.batch * 4:
        raise ValueError(f"the corpus ({len(train[1])} tokens) is too small for batches of {a.batch} x {a.seq}")
    with tempfile.TemporaryDirectory() as d:
        for n in names:
            hp = dict(MODELS[n], ctx=a.seq, rope_theta=1e6, rms_eps=1e-6)
            path = os.path.join(d, n + ".gguf")
            rep = export(n, gguf_export.random_weights(hp, 1), hp, path, {"trove.train.steps": ("u32", 0)})
            parts, zbytes = write_parts(path, d)
            size = os.path.getsize(path)
            log(f"{n}: {len(rep)} tensors, GGUF {size / 1e6:.1f} MB, gzip {zbytes / 1e6:.1f} MB in {len(parts)} parts")
    log(f"dry run ok: models {names}, seconds {secs}, seq {a.seq}, batch {a.batch}")


# ----------------------------------------------------------------------------------------------------
# Torch side (device only).

def build_model(hp, impl, seq, torch):
    if impl == "transformers":
        try:
            from transformers import Qwen3Config, Qwen3ForCausalLM
            kw = dict(rope_theta=1e6, vocab_size=VOCAB, hidden_size=hp["hidden"], intermediate_size=hp["ffn"],
                      num_hidden_layers=hp["layers"], num_attention_heads=hp["heads"],
                      num_key_value_heads=hp["kv_heads"], head_dim=hp["head_dim"], max_position_embeddings=seq,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, attention_dropout=0.0, use_cache=False,
                      use_sliding_window=False)
            try:
                cfg = Qwen3Config(**kw)
            except Exception:  # noqa: BLE001 — transformers 5: the base goes into rope_parameters
                kw.pop("rope_theta")
                cfg = Qwen3Config(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **kw)
            try:
                cfg._attn_implementation = "sdpa"
            except Exception:  # noqa: BLE001
                pass
            m = Qwen3ForCausalLM(cfg)
            if m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr():
                log("transformers did not tie lm_head to embed_tokens: tying them by hand")
                m.lm_head.weight = m.model.embed_tokens.weight
            a0 = m.model.layers[0].self_attn
            want = (hp["heads"] * hp["head_dim"], hp["hidden"])
            if tuple(a0.q_proj.weight.shape) != want or tuple(a0.q_norm.weight.shape) != (hp["head_dim"],):
                raise RuntimeError(f"q_proj {tuple(a0.q_proj.weight.shape)} (want {want}) / q_norm "
                                   f"{tuple(a0.q_norm.weight.shape)}: head_dim was not honoured")
            # The RoPE base the model really uses (transformers 4 and 5 spell the argument differently;
            # whatever it is, the GGUF says the same): inv_freq[i] = theta^(-2i/d), over the whole head.
            inv = m.model.rotary_emb.inv_freq.float().cpu()
            if inv.numel() != hp["head_dim"] // 2:
                raise RuntimeError(f"rotary inv_freq has {inv.numel()} entries, expected {hp['head_dim'] // 2}")
            theta = float(f"{float(inv[1].item()) ** (-hp['head_dim'] / 2.0):.4g}")
            back = 1.0 / theta ** (torch.arange(0, hp["head_dim"], 2, dtype=torch.float64) / hp["head_dim"])
            if not torch.allclose(back.float(), inv, rtol=1e-3):
                raise RuntimeError("rotary inv_freq is not the default RoPE of a single base")
            log(f"model: transformers {__import__('transformers').__version__} Qwen3ForCausalLM, rope theta {theta:.6g}")
            return m, theta, "transformers"
        except Exception as e:  # noqa: BLE001
            log(f"transformers' Qwen3 failed ({type(e).__name__}: {e}); using the built-in Qwen3\n"
                + traceback.format_exc())
    import own_qwen3
    m = own_qwen3.Qwen3(VOCAB, hp, theta=1e6, eps=1e-6)
    log("model: built-in Qwen3 (tools/train/own_qwen3.py), rope theta 1e6")
    return m, 1e6, "own"


def logits_of(model, kind, x):
    if kind == "transformers":
        return model(input_ids=x, use_cache=False).logits
    return model(x)


def train_one(name, hp, budget, a, data, torch):
    F = torch.nn.functional
    dev = "cuda"
    torch.manual_seed(a.seed)
    model, theta, kind = build_model(hp, a.impl, a.seq, torch)
    model.to(dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except Exception:  # noqa: BLE001
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    (train_lens, train_tok), (held_lens, held_tok) = data
    tok = torch.from_numpy(train_tok.astype(np.int64)).to(dev)
    starts = np.concatenate([[0], np.cumsum(train_lens)[:-1]])
    starts = torch.from_numpy(starts[starts < len(train_tok) - a.seq - 1].astype(np.int64)).to(dev)
    held = torch.from_numpy(held_tok.astype(np.int64)).to(dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(a.seed)
    ar = torch.arange(a.seq + 1, device=dev)
    batch = a.batch
    log(f"{name}: {n_params / 1e6:.2f} M parameters ({(n_params - VOCAB * hp['hidden']) / 1e6:.2f} M without the "
        f"embedding), {budget:.0f} s, batch {batch} x {a.seq}, lr {a.lr}, impl {kind}")

    def held_loss(max_windows):
        model.eval()
        n = min(max_windows, (len(held) - 1) // a.seq)
        tot, cnt = 0.0, 0
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            for i in range(0, n, batch):
                k = min(batch, n - i)
                idx = (torch.arange(i, i + k, device=dev) * a.seq)[:, None] + ar[None, :]
                w = held[idx]
                lg = logits_of(model, kind, w[:, :-1])
                tot += F.cross_entropy(lg.float().reshape(-1, VOCAB), w[:, 1:].reshape(-1), reduction="sum").item()
                cnt += w[:, 1:].numel()
        model.train()
        return tot / max(cnt, 1)

    t0 = time.time()
    step, tokens, ema, last_eval = 0, 0, None, 0.0
    curve = []
    while True:
        el = time.time() - t0
        if el >= budget:
            break
        frac = el / budget
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        half = batch // 2
        r1 = torch.randint(0, len(tok) - a.seq - 1, (batch - half,), device=dev, generator=gen)
        r2 = starts[torch.randint(0, len(starts), (half,), device=dev, generator=gen)]
        idx = torch.cat([r1, r2])[:, None] + ar[None, :]
        w = tok[idx]
        lg = loss = None
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                lg = logits_of(model, kind, w[:, :-1])
            loss = F.cross_entropy(lg.float().reshape(-1, VOCAB), w[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            lg = loss = None
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            batch //= 2
            log(f"{name}: out of memory; batch now {batch}")
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += w[:, 1:].numel()
        lv = loss.item() if step % 10 == 0 or step < 10 else None
        if lv is not None:
            if not math.isfinite(lv):
                raise RuntimeError(f"{name}: the loss is {lv} at step {step}: lower --lr and run again")
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
        if step == 1 or (time.time() - t0) - last_eval >= a.eval_every:
            last_eval = time.time() - t0
            hl = held_loss(16)
            curve.append((step, round(last_eval, 1), tokens, ema, hl))
            log(f"{name} step {step:6d}  {last_eval:6.1f} s  {tokens / 1e6:8.2f} M tokens  lr {lr:.2e}  "
                f"train loss {ema if ema is not None else float('nan'):.4f}  held-out loss {hl:.4f}  "
                f"({tokens / max(last_eval, 1e-6) / 1e3:.0f} k tok/s)")
    el = time.time() - t0
    hl = held_loss(10 ** 9)
    ema = float("nan") if ema is None else ema
    log(f"{name}: done: {step} steps, {tokens / 1e6:.1f} M tokens in {el:.0f} s; final train loss {ema:.4f}; "
        f"held-out loss {hl:.4f} (perplexity {math.exp(hl):.3f}) over {(len(held) - 1) // a.seq * a.seq} tokens")
    weights = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()
               if k.endswith(".weight") and not k.endswith("lm_head.weight")}
    if kind == "transformers" and not any(k.startswith("model.") for k in weights):
        weights = {("model." + k if not k.startswith("model.") else k): v for k, v in weights.items()}
    stats = dict(steps=step, tokens=tokens, seconds=round(el, 1), train_loss=ema, heldout_loss=hl,
                 heldout_ppl=math.exp(hl), params=n_params, impl=kind, curve=curve)
    return weights, dict(hp, ctx=a.seq, rope_theta=theta, rms_eps=1e-6), stats


def main():
    global LOG
    a = args_parser().parse_args()
    if a.dry_run:
        try:
            dry_run(a)
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"train.py --dry-run: {e}")
        return
    os.makedirs(a.out, exist_ok=True)
    LOG = open(os.path.join(a.out, "train_log.txt"), "a", encoding="utf-8")
    names, secs = check_args(a)
    log(f"train.py {json.dumps(vars(a))}")
    import torch
    log(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0)}")
    torch.backends.cuda.matmul.allow_tf32 = True
    meta, train, held = make_corpus_io.load(a.data)
    log(f"corpus: seed {meta['seed']}, train {len(train[1])} tokens, held out {len(held[1])}")
    work = tempfile.mkdtemp()
    summary = {}
    for n, budget in zip(names, secs):
        try:
            weights, hp, st = train_one(n, dict(MODELS[n]), budget, a, (train, held), torch)
            torch.cuda.empty_cache()
            path = os.path.join(work, n + ".gguf")
            t = time.time()
            extra = {"trove.train.steps": ("u32", st["steps"]), "trove.train.tokens": ("str", str(st["tokens"])),
                     "trove.train.heldout_loss": ("f32", float(st["heldout_loss"])),
                     "trove.train.corpus_seed": ("u32", int(meta["seed"]))}
            export(n, weights, hp, path, extra)
            data = open(path, "rb").read()
            parts, zbytes = write_parts(path, a.out)
            st.update(gguf_bytes=len(data), gguf_sha256=hashlib.sha256(data).hexdigest(), gzip_bytes=zbytes, parts=parts)
            log(f"{n}: exported in {time.time() - t:.1f} s: {len(data) / 1e6:.2f} MB (sha256 {st['gguf_sha256']}), "
                f"gzip {zbytes / 1e6:.2f} MB in {parts}")
            summary[n] = st
        except Exception as e:  # noqa: BLE001 — the other model still gets its chance
            log(f"{n}: FAILED: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    log("summary " + json.dumps({n: {k: v for k, v in s.items() if k != "curve"} for n, s in summary.items()}))
    log("curves " + json.dumps({n: s["curve"] for n, s in summary.items()}))
    sys.exit(0 if len(summary) == len(names) else 1)


if __name__ == "__main__":
    main()
