"""Multi-block .xz streams written from the xz file format 1.2 spec, for tests: what
`xz -T0` writes (every block header carries both sizes), with a CRC32 check, built from
raw LZMA2 pieces; the `xz` binary is not needed. `lie` edits one block header's sizes
(with a valid header CRC32), so a decoder must notice the data disagrees."""
from __future__ import annotations

import functools
import lzma
import struct
import zlib
from typing import Dict, List, Optional, Sequence, Tuple, Union

MAGIC = b"\xfd7zXZ\x00"
FLAGS_CRC32 = b"\x00\x01"     # stream flags: check ID 1 = CRC32 (spec 2.1.1.2)
DICT = 1 << 20
DICT_PROPS = 16               # LZMA2 dictionary byte for 1 MiB: 2 << (16 // 2 + 11)


def vli(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def block_header(compressed: Optional[int], uncompressed: Optional[int]) -> bytes:
    flags = (0x40 if compressed is not None else 0) | (0x80 if uncompressed is not None else 0)
    body = bytearray([flags])
    body += vli(compressed) if compressed is not None else b""
    body += vli(uncompressed) if uncompressed is not None else b""
    body += vli(0x21) + vli(1) + bytes([DICT_PROPS])   # one filter: LZMA2 (spec 5.3.1)
    size = -(-(len(body) + 5) // 4) * 4                  # + size byte + CRC32, padded
    raw = bytes([size // 4 - 1]) + body + bytes(size - 5 - len(body))
    return raw + struct.pack("<I", zlib.crc32(raw))


@functools.lru_cache(maxsize=64)
def lzma2(chunk: bytes) -> bytes:
    """One block's raw LZMA2 data. Cached: the tests cut the same image into the same
    blocks again and again (with and without sizes, with lying headers)."""
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 0, "dict_size": DICT}]
    return lzma.compress(chunk, format=lzma.FORMAT_RAW, filters=filters)


def xz_blocks(data: bytes, block_size: Union[int, Sequence[int]], sizes: bool = True,
              lie: Optional[Dict[int, Tuple[int, int]]] = None) -> bytes:
    """One stream of `data` in blocks of `block_size` (or of these sizes, the last one
    repeated); lie={block: (dcomp, duncomp)} adds to the sizes block `block` declares."""
    plan = [block_size] if isinstance(block_size, int) else list(block_size)
    starts, at = [], 0
    while at < len(data):
        starts.append(at)
        at += plan[min(len(starts) - 1, len(plan) - 1)]
    out = bytearray(MAGIC + FLAGS_CRC32 + struct.pack("<I", zlib.crc32(FLAGS_CRC32)))
    records: List[Tuple[int, int]] = []
    for number, start in enumerate(starts):
        chunk = data[start:(starts + [len(data)])[number + 1]]
        packed = lzma2(chunk)
        dcomp, duncomp = (lie or {}).get(number, (0, 0))
        header = block_header(len(packed) + dcomp if sizes else None,
                              len(chunk) + duncomp if sizes else None)
        out += header + packed + bytes(-len(packed) % 4) + struct.pack("<I", zlib.crc32(chunk))
        records.append((len(header) + len(packed) + 4, len(chunk)))
    index = bytearray(b"\x00" + vli(len(records)))
    for unpadded, uncompressed in records:
        index += vli(unpadded) + vli(uncompressed)
    index += bytes(-len(index) % 4)
    index += struct.pack("<I", zlib.crc32(index))
    backward = struct.pack("<I", len(index) // 4 - 1) + FLAGS_CRC32
    return bytes(out + index + struct.pack("<I", zlib.crc32(backward)) + backward + b"YZ")


def block_offsets(stream: bytes) -> List[Tuple[int, int]]:
    """(offset, header size) of every block of a one-stream file whose block headers
    all carry the compressed size (as xz_blocks and `xz -T2` write them)."""
    check = {0: 0, 1: 4, 4: 8, 10: 32}[stream[7] & 0x0F]
    found, pos = [], 12
    while stream[pos]:
        size = (stream[pos] + 1) * 4
        compressed, at, shift = 0, pos + 2, 0
        while True:
            byte = stream[at]
            compressed |= (byte & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if not byte & 0x80:
                break
        found.append((pos, size))
        pos += size + compressed + (-compressed % 4) + check
    return found
