"""The image pipeline's input: a raw "disk image" of mixed 1 MiB blocks, compressed with
gzip -6 and xz -6, cached (generating 768 MiB and xz-compressing it takes minutes).

The mix imitates an OS image: runs of zeros (free space), random blocks (already
compressed payloads: firmware, packages) and text-like blocks (binaries, configs, docs).
Each text block is freshly drawn from a Zipf-weighted vocabulary, so xz's 8 MiB
dictionary cannot match whole blocks against earlier ones (a repeated pool would make xz
unrealistically fast). The generator is seeded: the same size gives the same bytes.

xz runs with -T2: the same .xz format (one stream, blocks of 24 MiB with their sizes in
the headers); xz 5.4's `xz -dc` still decodes it on one thread unless given -T.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import subprocess
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

MiB = 1 << 20
BLOCK = MiB
GENERATOR_VERSION = 1          # bump when the bytes change: invalidates every cache
SEED = 15                      # issue 15
MIX = (("zeros", 3), ("random", 3), ("text", 4))   # weights of each kind of 1 MiB block
VOCABULARY = 4096              # distinct words in text-like blocks
LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
PUNCTUATION = ("\n", ".", ",", "=", "/", "0", "1", "2024", "0x1f", "--", "#")
COMPRESSORS = {"gz": ["gzip", "-6", "-c"], "xz": ["xz", "-T2", "-6", "-c"]}


class Image(NamedTuple):
    size: int          # raw bytes
    sha256: str        # of the raw bytes: what every client's output must hash to
    gz: str            # path of the gzip -6 file
    xz: str            # path of the xz -6 file
    gz_size: int
    xz_size: int
    blocks: str        # "zeros:N random:N text:N"


def _words(rng: random.Random) -> Tuple[List[str], List[float]]:
    """A vocabulary with Zipf weights (cumulative), plus punctuation-like tokens."""
    words = ["".join(rng.choices(LETTERS, k=rng.randint(2, 11))) for _ in range(VOCABULARY)]
    words[:0] = list(PUNCTUATION)
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))
    return words, cumulative


def _blocks(size: int, rng: random.Random) -> Tuple[List[str], Callable[[str], bytes]]:
    """The kind of every block, and a function making one block of a kind."""
    kinds = [k for k, _ in MIX]
    order = rng.choices(kinds, weights=[w for _, w in MIX], k=(size + BLOCK - 1) // BLOCK)
    words, cumulative = _words(rng)
    zeros = bytes(BLOCK)

    def make(kind: str) -> bytes:
        if kind == "zeros":
            return zeros
        if kind == "random":
            return rng.getrandbits(8 * BLOCK).to_bytes(BLOCK, "little")
        text = " ".join(rng.choices(words, cum_weights=cumulative, k=BLOCK // 4))
        return text.encode("ascii")[:BLOCK].ljust(BLOCK, b" ")

    return order, make


def write_raw(path: str, size: int) -> Tuple[str, str]:
    """Write the raw image; return (its sha256, the block counts)."""
    rng = random.Random("%d:%d" % (SEED, GENERATOR_VERSION))
    order, make = _blocks(size, rng)
    digest = hashlib.sha256()
    left = size
    with open(path, "wb") as f:
        for kind in order:
            block = make(kind)[:left]
            f.write(block)
            digest.update(block)
            left -= len(block)
    counts = " ".join("%s:%d" % (k, order.count(k)) for k, _ in MIX)
    return digest.hexdigest(), counts


def _compress(raw: str, base: str) -> None:
    """gzip and xz side by side (xz -T2 takes both cores; gzip finishes long before)."""
    procs = []
    for ext, argv in COMPRESSORS.items():
        with open(base + "." + ext + ".tmp", "wb") as out:
            procs.append((ext, subprocess.Popen(argv + [raw], stdout=out)))
    for ext, proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("%s failed (%d)" % (COMPRESSORS[ext][0], proc.returncode))
        os.replace(base + "." + ext + ".tmp", base + "." + ext)


def _cached(base: str, size: int) -> Optional[Image]:
    try:
        with open(base + ".json") as f:
            meta = json.load(f)
        if meta["size"] != size or meta["version"] != GENERATOR_VERSION \
                or meta["compressors"] != COMPRESSORS:
            return None
        if os.path.getsize(base + ".gz") != meta["gz_size"] \
                or os.path.getsize(base + ".xz") != meta["xz_size"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return Image(size, meta["sha256"], base + ".gz", base + ".xz", meta["gz_size"],
                 meta["xz_size"], meta["blocks"])


def ensure_image(size: int, cache_dir: str, log: Callable[[str], None]) -> Image:
    """The cached image of `size` bytes, generated and compressed first if missing."""
    os.makedirs(cache_dir, exist_ok=True)
    base = os.path.join(cache_dir, "image-%d-v%d" % (size, GENERATOR_VERSION))
    found = _cached(base, size)
    if found is not None:
        return found
    started = time.monotonic()
    raw = base + ".raw"
    log("image pipeline: generating a %d MiB raw image (once; cached in %s)"
        % (size // MiB, cache_dir))
    sha, counts = write_raw(raw, size)
    log("image pipeline: compressing with %s" % " and ".join(
        " ".join(a) for a in COMPRESSORS.values()))
    try:
        _compress(raw, base)
    finally:
        os.unlink(raw)
    meta = {"size": size, "version": GENERATOR_VERSION, "compressors": COMPRESSORS,
            "sha256": sha, "blocks": counts, "gz_size": os.path.getsize(base + ".gz"),
            "xz_size": os.path.getsize(base + ".xz"),
            "seconds": round(time.monotonic() - started, 1)}
    with open(base + ".json.tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(base + ".json.tmp", base + ".json")   # written last: the cache is whole
    log("image pipeline: image ready in %.0f s" % meta["seconds"])
    found = _cached(base, size)
    assert found is not None
    return found
