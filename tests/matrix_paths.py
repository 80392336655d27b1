"""The data paths of the fault x data-path matrix (tests/test_matrix.py).

Each path is one way a user gets the bytes: a driver runs the download and returns what
the user ended up holding (file contents, stdout, bytes read) with the exit code or the
exception. Every path runs in this process, so the matrix runs on the virtual clock
(tests/vclock.py): the command's own entry point (cli.run) with fd 1 on a real pipe for
the stdout paths, the API paths as a program calls them. The real `python3 -m rawfetch`
in a subprocess, on the real clock, is the slow tier's row (COMMAND_PATHS). Elapsed
times are read from rawfetch.timing: virtual seconds under the virtual clock. The
matrix crosses every path with every fault of test_matrix.py.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import itertools
import os
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import rawfetch
from rawfetch import errors as E
from rawfetch import timing
from rawfetch.compat import HttpUrl
from rawfetch.compat.ironic import ImageDownload
from tests.faultserver import make_body

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (4 << 20) + 17              # odd, and long enough for two faults past 1 MiB each
BODY = make_body(SIZE, seed=10)
GZ = gzip.compress(BODY, compresslevel=1, mtime=0)   # what the --gunzip path is served
PACKED = {"gzip": GZ, "bzip2": bz2.compress(BODY, 1)}  # xz: packed on first use (slow)
XOR_FF = bytes(255 - i for i in range(256))
# --in-place target: differs from BODY at every offset and is longer, so a stale byte
# anywhere (a gap, a shift, an uncut tail) shows in the comparison.
STALE = BODY.translate(XOR_FF) + b"\xa5" * 4099
READ_SIZES = (1, 7, 4095, 65537, 1 << 20)   # open().readinto() sizes, cycled
XZ_BLOCK = 384 << 10                        # xz-blocks row: 11 blocks, faults cut inside them
HTTPURL_CHUNK = 98317                       # compat.HttpUrl chunk_size: odd, not a power of 2
COMMAND_TIMEOUT = 50.0   # hang guard only (below the cell's pytest timeout), not a speed bound
FLAG_NAMES = {"cafile": "--cacert", "no_proxy": "--noproxy"}


class Got(NamedTuple):
    """What the user holds after one run of a path."""
    data: bytes                     # file contents, stdout, or bytes read through the API
    code: Optional[int]             # command exit code (None for API paths)
    error: Optional[BaseException]  # the FetchError an API path raised (None on success)
    final: Optional[str]            # the output file a file-mode path promises, else None
    stderr: str
    elapsed: float


class DataPath(NamedTuple):
    """One data path: its driver and how its cells are set up."""
    name: str
    driver: Callable[[Sequence[str], Dict[str, Any], str], Got]
    checksum: bool = False     # pass --sha256 of the served bytes (a hash worker)
    tls: bool = False          # serve over https from the TLS fault server
    gunzip: bool = False       # serve GZ, expect BODY out (the --gunzip spelling)
    codec: str = ""            # serve BODY packed with it, --decompress it, expect BODY out
    decompress: str = ""       # --decompress this over the served bytes as they are
    limit_rate: int = 0        # --limit-rate: the pacing path
    proxy: bool = False        # through the in-repo proxy: absolute-form, or a CONNECT tunnel
    chunked: bool = False      # chunked transfer coding
    mirrors: str = ""          # "first": fault on the first of two mirrors; "both": on each
    stream: bool = False       # the user consumes a stream: an error leaves a byte-exact prefix
    in_place: str = ""         # writes into the target: a TARGETS key ("stale", "old", "device")
    pieces: str = ""           # a .meta4 instead of URLs: "whole" (+ sha-256) or "only"
    # the closed ranges (first, last) a delta re-image must ask, in order: the target is
    # OLD, and each range's own requests get the fault (tests/test_matrix.py)
    ranges: Tuple[Tuple[int, int], ...] = ()

    def served(self) -> bytes:
        return GZ if self.gunzip else packed(self.codec)


def packed(codec: str) -> bytes:
    """BODY as served with `codec` ("": as it is)."""
    if codec == "xz-blocks" and codec not in PACKED:
        from tests.xzmake import xz_blocks   # sizes in every header: the thread pool
        PACKED[codec] = xz_blocks(BODY, XZ_BLOCK)
    if codec and codec not in PACKED:
        import lzma
        PACKED[codec] = lzma.compress(BODY, preset=0)
    return PACKED[codec] if codec else BODY


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flags(options: Dict[str, Any]) -> List[str]:
    """API keywords -> the command's flags (dashes for underscores, cafile is --cacert)."""
    argv: List[str] = []
    for name, value in sorted(options.items()):
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv.append("%s=%s" % (flag, value))   # one token: "" stays a value
    return argv


def run_command(urls: Sequence[str], options: Dict[str, Any], output: str) -> Got:
    """`rawfetch URL [MIRROR...] -o OUTPUT -q FLAGS` by the command's own entry point in
    this process (cli.run: argument parsing, exit codes, one-line errors); reads OUTPUT
    back, or for `-o -` what crossed fd 1 (a real pipe)."""
    argv = [*urls, "-o", output, "-q", *flags(options)]
    if output == "-":
        return _run_to_stdout(argv)
    code, stderr, elapsed = _run_in_process(argv)
    data = b""
    if os.path.exists(output):
        with open(output, "rb") as handle:
            data = handle.read()
    return Got(data, code, None, output, stderr, elapsed)


def run_process(urls: Sequence[str], options: Dict[str, Any]) -> Got:
    """`python3 -m rawfetch URL... -o - -q FLAGS` in a subprocess, on the real clock."""
    argv = [sys.executable, "-m", "rawfetch", *urls, "-o", "-", "-q", *flags(options)]
    started = timing.now()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=ROOT), timeout=COMMAND_TIMEOUT)
    elapsed = timing.now() - started
    return Got(proc.stdout, proc.returncode, None, None,
               proc.stderr.decode("utf-8", "replace"), elapsed)


def _run_in_process(argv: List[str]) -> Tuple[int, str, float]:
    """cli.run(argv) with stderr captured: (exit code, stderr, elapsed seconds)."""
    import contextlib
    import io
    from rawfetch.cli import run
    errors = io.StringIO()
    started = timing.now()
    with contextlib.redirect_stderr(errors):
        try:
            code = run(argv)
        except SystemExit as exc:      # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, errors.getvalue(), timing.now() - started


def _run_to_stdout(argv: List[str]) -> Got:
    """cli.run(argv) with fd 1 on a pipe that a reader thread empties: the bytes cross
    a real fd 1 with os.write, as in the command, without leaving this process."""
    read_end, write_end = os.pipe()
    chunks: List[bytes] = []
    reader = threading.Thread(target=_read_all, args=(read_end, chunks), daemon=True)
    reader.start()
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(write_end, 1)
        os.close(write_end)
        code, stderr, elapsed = _run_in_process(argv)
    finally:
        os.dup2(saved, 1)       # the pipe's last write end is gone: the reader sees EOF
        os.close(saved)
    reader.join(COMMAND_TIMEOUT)
    os.close(read_end)
    return Got(b"".join(chunks), code, None, None, stderr, elapsed)


def _read_all(fd: int, chunks: List[bytes]) -> None:
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return
        chunks.append(chunk)


def drive_file(urls: Sequence[str], options: Dict[str, Any], tmp: str) -> Got:
    return run_command(urls, options, os.path.join(tmp, "img"))


def drive_in_place(urls: Sequence[str], options: Dict[str, Any], tmp: str,
                   holding: bytes = STALE) -> Got:
    target = os.path.join(tmp, "disk.img")
    with open(target, "wb") as handle:
        handle.write(holding)
    return run_command(urls, dict(options, in_place=True), target)


# The block-device row's target: STALE cut to whole 4096-byte blocks (a loop device's
# size is its backing file's, rounded down to 512), still longer than the image.
DEVICE_STALE = STALE[:len(STALE) - len(STALE) % 4096]


def drive_block_device(urls: Sequence[str], options: Dict[str, Any], tmp: str) -> Got:
    """The command onto a loop device holding DEVICE_STALE: in place, in whole blocks
    (disk.BlockTail; spliced ones too), never cut. The user holds the device's first SIZE
    bytes when the rest is still the old bytes; any other tail returns the whole device,
    so the cell's byte check fails. A failure returns the whole device."""
    import pytest
    if os.geteuid() != 0 or not os.path.exists("/sbin/losetup") and not os.path.exists(
            "/usr/sbin/losetup"):
        pytest.skip("the block-device row needs root and losetup")
    backing = os.path.join(tmp, "device-backing")
    with open(backing, "wb") as handle:
        handle.write(DEVICE_STALE)
    made = subprocess.run(["losetup", "-f", "--show", backing], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    if made.returncode != 0 or not made.stdout.startswith("/dev/"):
        pytest.skip("losetup failed: %s" % made.stderr.strip())
    device = made.stdout.strip()
    try:
        got = run_command(urls, dict(options, in_place=True), device)
    finally:
        subprocess.run(["losetup", "-d", device], check=False, timeout=30)
    with open(backing, "rb") as handle:    # what the device holds, after its detach
        held = handle.read()
    if got.code == 0 and held[SIZE:] == DEVICE_STALE[SIZE:]:
        held = held[:SIZE]
    return got._replace(data=held, final=None)


PIECE = 256 << 10     # the metalink rows' piece size: 17 pieces, faults land mid-piece

# The pieces-delta row's target: the image except DELTA_PIECES (every byte of each
# inverted), and 4099 bytes longer, so a success must also cut it to the image's size.
# Piece 1 lies in the first MiB (the head, fetched whole and written last); 9 stands
# alone; 15 and 16 (the 17-byte tail) are neighbours joined into one range. Runs more
# than delta.COALESCE_GAP (1 MiB) apart stay apart, so the plan is three closed ranges:
DELTA_PIECES = (1, 9, 15, 16)
DELTA_RANGES = ((0, (1 << 20) - 1), (9 * PIECE, 10 * PIECE - 1), (15 * PIECE, SIZE - 1))


def _old_image() -> bytes:
    old = bytearray(BODY)
    for index in DELTA_PIECES:
        start = index * PIECE
        old[start:start + PIECE] = BODY[start:start + PIECE].translate(XOR_FF)
    return bytes(old) + b"\x5a" * 4099


OLD = _old_image()
TARGETS = {"stale": STALE, "old": OLD,   # DataPath.in_place -> the target's bytes before
           "device": DEVICE_STALE}


def write_meta4(urls: Sequence[str], whole: bool, path: str, codec: str = "") -> str:
    """A Metalink for the bytes served with `codec` listing `urls` ranked in order,
    sha-256 pieces of PIECE bytes, and the whole sha-256 when `whole`."""
    from rawfetch.metalink import File, Mirror, Pieces
    from rawfetch.metalink.make import to_xml
    image = packed(codec)
    digests = b"".join(hashlib.sha256(image[at:at + PIECE]).digest()
                       for at in range(0, len(image), PIECE))
    item = File("img", len(image), (("sha-256", sha256(image)),) if whole else (),
                (Pieces("sha-256", PIECE, digests),),
                tuple(Mirror(url, rank) for rank, url in enumerate(urls, 1)))
    with open(path, "w") as handle:
        handle.write(to_xml([item]))
    return path


def drive_metalink(whole: bool, output: str = "file", codec: str = ""
                   ) -> Callable[[Sequence[str], Dict[str, Any], str], Got]:
    """`rawfetch --metalink IMG.meta4 -o IMG`: no URL on the command line; the mirrors,
    size, hash and pieces come from the .meta4. Each piece is checked into the .part or
    the STALE target (output "in-place") or the OLD one ("delta"), or held back until it
    verifies (stdout, a decoder)."""
    def drive(urls: Sequence[str], options: Dict[str, Any], tmp: str) -> Got:
        meta4 = write_meta4(urls, whole, os.path.join(tmp, "m4"), codec)
        options = dict(options, metalink=meta4)
        if output in ("in-place", "delta"):
            return drive_in_place([], options, tmp, OLD if output == "delta" else STALE)
        return run_command([], options, "-" if output == "stdout" else os.path.join(tmp, "img"))
    return drive


def drive_stdout(urls: Sequence[str], options: Dict[str, Any], tmp: str) -> Got:
    return run_command(urls, options, "-")


def drive_stdout_process(urls: Sequence[str], options: Dict[str, Any], tmp: str) -> Got:
    return run_process(urls, options)


def drive_open(urls: Sequence[str], options: Dict[str, Any], tmp: str) -> Got:
    """rawfetch.open() read with readinto() at odd sizes, cycling through READ_SIZES."""
    got = bytearray()
    error: Optional[BaseException] = None
    started = timing.now()
    try:
        with rawfetch.open(urls[0], urls=list(urls[1:]), **options) as stream:
            for size in itertools.cycle(READ_SIZES):
                buffer = bytearray(size)
                count = stream.readinto(buffer)
                if not count:
                    break
                got += buffer[:count]
    except E.FetchError as exc:
        error = exc
    return Got(bytes(got), None, error, None, "", timing.now() - started)


def drive_httpurl(urls: Sequence[str], options: Dict[str, Any], tmp: str) -> Got:
    """compat.HttpUrl iterated in HTTPURL_CHUNK pieces, as fuel-agent's chain reads it."""
    got = bytearray()
    error: Optional[BaseException] = None
    started = timing.now()
    try:
        for chunk in HttpUrl(urls[0], chunk_size=HTTPURL_CHUNK, **options):
            got += chunk
    except E.FetchError as exc:
        error = exc
    return Got(bytes(got), None, error, None, "", timing.now() - started)


def drive_ironic(urls: Sequence[str], options: Dict[str, Any], tmp: str) -> Got:
    """compat.ironic.ImageDownload iterated as the agent does, with the mirrors as
    image_info['urls'] and the checksum as os_hash_algo/os_hash_value (the agent needs
    one); the cell's rawfetch options are passed as config under their own names."""
    config = dict(options)
    algo, _, value = config.pop("checksum").partition(":")
    info = {"id": "matrix", "urls": list(urls), "os_hash_algo": algo, "os_hash_value": value}
    got = bytearray()
    error: Optional[BaseException] = None
    started = timing.now()
    try:
        for chunk in ImageDownload(info, **config):
            got += chunk
    except E.FetchError as exc:
        error = exc
    return Got(bytes(got), None, error, None, "", timing.now() - started)


PATHS = [
    # Linux + Python >= 3.10 moves plain-HTTP bodies with os.splice; 3.8 runs the copy path.
    DataPath("splice", drive_file),
    # with splice the worker hashes the .part read back; else (3.8) the received buffers
    DataPath("sha256", drive_file, checksum=True),
    DataPath("tls", drive_file, tls=True),
    # TLS: the worker hashes each decrypted buffer while this thread writes it
    DataPath("sha256-tls", drive_file, checksum=True, tls=True),
    DataPath("in-place", drive_in_place, in_place="stale"),
    # a block device (a loop device): every write and splice in whole 4096-byte blocks,
    # resumed and restarted at any offset (disk.BlockTail, docs/disk-safety.md)
    DataPath("block-device", drive_block_device, in_place="device"),
    DataPath("stdout", drive_stdout, stream=True),
    DataPath("gunzip", drive_file, gunzip=True),
    # the worker thread decodes and writes while the next buffer arrives
    DataPath("xz", drive_file, codec="xz"),
    DataPath("bzip2-stdout", drive_stdout, codec="bzip2", stream=True),
    DataPath("xz-open", drive_open, codec="xz", stream=True),
    # issue 25: a multi-block stream decoded on 3 pool threads, checksum over the packed bytes
    DataPath("xz-blocks", drive_file, codec="xz-blocks", checksum=True),
    # `auto` on an uncompressed body: views of the receive ring pass through the decoder
    DataPath("auto-plain", drive_file, decompress="auto"),
    # paced before every receive; well above the matrix's low-speed limit
    DataPath("rate-limit", drive_file, limit_rate=16 << 20),
    # a proxy relays the origin's faults: plain HTTP in absolute-form, https in a tunnel
    DataPath("proxy-http", drive_file, proxy=True),
    DataPath("proxy-connect", drive_file, proxy=True, tls=True),
    DataPath("chunked", drive_file, chunked=True),
    DataPath("mirror", drive_file, mirrors="first"),
    DataPath("mirror-both", drive_file, mirrors="both"),
    # issue 24: every piece checked as it lands in the .part (spliced bytes read back,
    # received ones as they come), with and without the whole-file hash, and handed over
    DataPath("pieces", drive_metalink(whole=True), pieces="whole"),
    DataPath("pieces-only", drive_metalink(whole=False), pieces="only"),
    DataPath("pieces-tls", drive_metalink(whole=True), pieces="whole", tls=True),
    DataPath("pieces-mirror", drive_metalink(whole=True), pieces="whole", mirrors="first"),
    # in place onto an existing target of other bytes: the delta re-imaging path
    # (docs/delta.md) with every piece differing, one closed range, resumed inside it
    DataPath("pieces-in-place", drive_metalink(whole=True, output="in-place"),
             pieces="whole", in_place="stale", ranges=((0, SIZE - 1),)),
    # in place onto OLD, the image but for 4 scattered pieces: the delta fetches three
    # closed ranges (the head first, written last), each resumed inside itself
    DataPath("pieces-delta", drive_metalink(whole=True, output="delta"), pieces="whole",
             in_place="old", ranges=DELTA_RANGES),
    DataPath("pieces-stdout", drive_metalink(whole=True, output="stdout"), pieces="whole",
             stream=True),
    DataPath("pieces-xz", drive_metalink(whole=True, codec="xz"), pieces="whole", codec="xz"),
    DataPath("open", drive_open, stream=True),
    DataPath("httpurl", drive_httpurl, stream=True),
    DataPath("ironic", drive_ironic, checksum=True, stream=True),
]


# The real command in a subprocess to a real stdout, on the real clock: the slow tier.
COMMAND_PATHS = [DataPath("stdout-command", drive_stdout_process, stream=True)]


def first_difference(got: bytes, want: bytes) -> int:
    """Offset of the first byte where got and want differ (-1 if equal)."""
    common = min(len(got), len(want))
    step = 1 << 16
    for start in range(0, common, step):
        end = min(start + step, common)
        if got[start:end] != want[start:end]:
            return next(i for i in range(start, end) if got[i] != want[i])
    return -1 if len(got) == len(want) else common


def describe(got: Got, want: bytes) -> str:
    """One line for an assertion message: outcome, size, first wrong byte."""
    diff = first_difference(got.data, want)
    where = "byte-exact" if diff < 0 else "first wrong byte at %d" % diff
    return "exit %s, error %r, %d of %d bytes, %s; stderr: %s" % (
        got.code, got.error, len(got.data), len(want), where, got.stderr.strip()[-300:])
