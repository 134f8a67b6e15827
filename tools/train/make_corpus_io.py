"""Reading the corpus files of make_corpus.py with numpy only (no jinja2, no trove): what train.py uses.

load(data_dir) -> (meta, (train_lengths, train_tokens), (heldout_lengths, heldout_tokens)), uint32
arrays, after checking each file's sha256, token count and id range against corpus.json (ValueError
naming the file and what to do otherwise).
"""
import hashlib
import json
import lzma
import os

import numpy as np


def _split(data_dir, meta, split):
    m = meta[split]
    path = os.path.join(data_dir, m["file"])
    blob = open(path, "rb").read()
    if hashlib.sha256(blob).hexdigest() != m["sha256"]:
        raise ValueError(f"{path}: sha256 differs from corpus.json; regenerate with tools/train/make_corpus.py")
    raw = lzma.decompress(blob)
    vals = np.frombuffer(raw, dtype="<u4")
    lens, toks = vals[:m["docs"]], vals[m["docs"]:]
    if int(lens.sum()) != len(toks) or len(toks) != m["tokens"]:
        raise ValueError(f"{path}: {len(toks)} tokens, lengths sum to {int(lens.sum())}, corpus.json says {m['tokens']}")
    if len(toks) and int(toks.max()) >= meta["vocab"]:
        raise ValueError(f"{path}: token id {int(toks.max())} is outside the vocabulary of {meta['vocab']}")
    return lens, toks


def load(data_dir):
    meta = json.load(open(os.path.join(data_dir, "corpus.json"), encoding="utf-8"))
    return meta, _split(data_dir, meta, "train"), _split(data_dir, meta, "heldout")
