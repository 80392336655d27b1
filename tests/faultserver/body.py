"""Deterministic test payloads."""
from __future__ import annotations

import hashlib


def make_body(size: int, seed: int = 0) -> bytes:
    """Return `size` deterministic pseudo-random bytes for `seed`.

    SHAKE-256 output is used as a stream: it is fast (~300 MB/s), never
    periodic, so a chunk written at any wrong offset is detected, and a
    shorter body is a prefix of a longer one with the same seed. Different
    seeds are independent streams, so they differ at ~255/256 of positions
    (every 16-byte window differs with overwhelming probability).
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    if size == 0:
        return b""
    key = b"rawfetch-faultserver-body:%d" % (seed,)
    return hashlib.shake_256(key).digest(size)
