"""rawfetch's real code path with one or more hot-path changes patched in at run time,
so each proposed change can be measured as a whole process against the unpatched code.
Bench-only: nothing here is (or should be) imported by rawfetch. The changes that were
adopted (hashing thread, TLS record draining, splice, no backoff after progress, lazy
hashlib) live in rawfetch now; what is left here are the ones measured and rejected.

    python -c "import rfvariant; rfvariant.main()" VARIANTS URL OUT [--sha256 HEX]
        [--cafile F]

VARIANTS is "base" or a comma list of:
    buf256k, buf4m   download()'s WRITE_BUFFER (and the stream loop's buffer) instead of 1 MiB
    rcvbuf4m         SO_RCVBUF = 4 MiB set before connect (disables rcv autotuning)
    fill             the stream loop (OUT -) fills the whole buffer before each os.write
                     (fewer syscalls and Python frames); download() splices plain bodies
                     to a file, so there is no buffer to fill on that path
    nofsync          os.fsync is a no-op (attribution only: what the durability costs)
Retired with the code they patched: fadvise (early writeback from the part file's write,
which spliced bodies no longer go through) and fill on the file path.
OUT "-" runs the stream path (rawfetch.open + readinto + os.write to stdout, as the CLI
does for -o -); anything else runs rawfetch.download(URL, OUT).
"""
import os
import sys

NOT_APPLICABLE = 4     # exit code: rawfetch's internals no longer have what a patch needs
VARIANTS = ("buf256k", "buf4m", "rcvbuf4m", "fill", "nofsync")


def _need(obj, name):
    """The attribute a patch hooks into, or exit NOT_APPLICABLE (the code moved on)."""
    if not hasattr(obj, name):
        sys.stderr.write("variant not applicable: %s has no %s\n"
                         % (getattr(obj, "__name__", obj), name))
        raise SystemExit(NOT_APPLICABLE)
    return getattr(obj, name)


def _patch_buf(size):
    import rawfetch.pipeline as pipeline
    _need(pipeline, "WRITE_BUFFER")
    pipeline.WRITE_BUFFER = size
    return size


def _patch_rcvbuf(size):
    import socket as real
    import rawfetch.net as net
    _need(net, "socket")

    class SocketShim:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def socket(*args, **kwargs):
            s = real.socket(*args, **kwargs)
            s.setsockopt(real.SOL_SOCKET, real.SO_RCVBUF, size)
            return s

    net.socket = SocketShim()


def _fill(stream, view, have):
    """Keep reading into view until it is full or the body ends."""
    size = len(view)
    while have and have < size:
        got = stream.readinto(view[have:])
        if not got:
            break
        have += got
    return have


def _stream(url, options, size, fill):
    import rawfetch
    view = memoryview(bytearray(size))
    with rawfetch.open(url, **options) as stream:
        while True:
            have = stream.readinto(view)
            if fill:
                have = _fill(stream, view, have)
            if not have:
                return
            chunk = view[:have]
            while chunk:
                chunk = chunk[os.write(1, chunk):]


def _parse(argv):
    """(variants, url, out, rawfetch options)."""
    variants = set(v for v in argv[0].split(",") if v and v != "base")
    unknown = variants - set(VARIANTS)
    if unknown:
        raise SystemExit("unknown variant(s): %s" % ", ".join(sorted(unknown)))
    options = {}
    pos = []
    rest = argv[1:]
    i = 0
    while i < len(rest):
        if rest[i] in ("--sha256", "--cafile"):
            key, value = rest[i][2:], rest[i + 1]
            options.update({"checksum": "sha256:" + value} if key == "sha256"
                           else {"cafile": value})
            i += 2
        else:
            pos.append(rest[i])
            i += 1
    url, out = pos
    return variants, url, out, options


def main(argv=None):
    variants, url, out, options = _parse(sys.argv[1:] if argv is None else argv)
    size = 1 << 20
    if "buf256k" in variants:
        size = _patch_buf(256 << 10)
    if "buf4m" in variants:
        size = _patch_buf(4 << 20)
    if "rcvbuf4m" in variants:
        _patch_rcvbuf(4 << 20)
    if "nofsync" in variants:
        os.fsync = lambda fd: None
    if "fill" in variants and out != "-":
        sys.stderr.write("variant not applicable: fill needs OUT - (files are spliced)\n")
        raise SystemExit(NOT_APPLICABLE)
    if out == "-":
        _stream(url, options, size, "fill" in variants)
    else:
        import rawfetch
        rawfetch.download(url, out, **options)


if __name__ == "__main__":
    main()
