#!/usr/bin/env python3
"""Recomputes the block-key test vectors of docs/kv-store-format.md from the written description,
with Python's xxhash (Debian python3-xxhash) — an implementation no one here wrote — and checks
them against the table in the doc. If the doc and trove's code (tests/kvstore/test_store.cpp) drift
apart, one of the two tests fails."""
import re
import struct
import sys

import xxhash


def block_key(parent: bytes, fingerprint: bytes, namespace: bytes, tokens) -> bytes:
    b = b"\x01" + parent
    b += b"\x02" + struct.pack("<I", len(fingerprint)) + fingerprint
    b += b"\x03" + struct.pack("<I", len(namespace)) + namespace
    b += b"\x04" + struct.pack("<I", len(tokens)) + b"".join(struct.pack("<i", t) for t in tokens)
    h = xxhash.xxh3_128_intdigest(b)
    hi, lo = h >> 64, h & ((1 << 64) - 1)
    return struct.pack("<QQ", hi, lo), f"{hi:016x}{lo:016x}"


doc = open(sys.argv[1] if len(sys.argv) > 1 else "docs/kv-store-format.md", encoding="utf-8").read()
documented = re.findall(r"\| `([0-9a-f]{32})` \|", doc)
k0_bytes, k0 = block_key(b"\0" * 16, b"fp", b"default", [9707, 11, 1879, 0])
_, k1 = block_key(k0_bytes, b"fp", b"default", [1, 2, 3])
ok = documented == [k0, k1]
print(f"computed {k0} {k1}; documented {' '.join(documented)}")
print("1 passed, 0 failed" if ok else "0 passed, 1 failed")
sys.exit(0 if ok else 1)
