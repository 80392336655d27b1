"""Publishing a Metalink 4 (RFC 5854) for an image, and the command behind
`python3 -m rawfetch.metalink make|check`: the image is read MAKE_READ_BLOCK at a time
(constant memory but for the piece digests, at most MAX_PIECES * 32 bytes) and hashed
whole and per piece with sha-256; mirrors are ranked 1, 2... in the order given."""
from __future__ import annotations

import hashlib
import os
import sys
from typing import Any, Optional, Sequence, Tuple
from xml.sax.saxutils import escape, quoteattr

from ..errors import InvalidRequest, MetalinkError
from . import (MAX_PIECES, MAX_URLS, NAMESPACE, File, Pieces, check_name, load,
                       make_mirror, piece_count)

DEFAULT_PIECE_SIZE = 4 << 20   # 256 pieces a GiB: a bad piece costs 4 MiB to refetch
MAKE_READ_BLOCK = 1 << 20      # bytes read from the image at a time


def describe(path: str, urls: Sequence[str], piece_size: int = DEFAULT_PIECE_SIZE,
             name: Optional[str] = None) -> File:
    """Hash the image at `path` (MAKE_READ_BLOCK at a time: constant memory but for the
    piece digests) into a File with size, sha-256 and sha-256 pieces, mirrors ranked 1, 2...
    in the order given. Raises InvalidRequest for a bad argument, OSError for the image."""
    name = check_name(name or os.path.basename(path), InvalidRequest)
    mirrors = tuple(make_mirror(url, str(rank), None, InvalidRequest)
                    for rank, url in enumerate(urls, 1))
    if not mirrors or len(mirrors) > MAX_URLS:
        raise InvalidRequest("give from 1 to %d --url" % MAX_URLS)
    if piece_size <= 0:
        raise InvalidRequest("the piece size must be at least one byte")
    with open(path, "rb", buffering=0) as image:
        size, whole, digests = _hash_image(image, piece_size)
    pieces = (Pieces("sha-256", piece_size, digests),) if size else ()
    return File(name, size, (("sha-256", whole),), pieces, mirrors)


def _hash_image(image: Any, piece_size: int) -> Tuple[int, str, bytes]:
    whole, piece = hashlib.sha256(), hashlib.sha256()
    digests, size, filled = bytearray(), 0, 0
    buffer = bytearray(MAKE_READ_BLOCK)
    view = memoryview(buffer)
    while True:
        got = image.readinto(buffer)
        if not got:
            break
        whole.update(view[:got])
        size, start = size + got, 0
        while start < got:
            take = min(got - start, piece_size - filled)
            piece.update(view[start:start + take])
            start, filled = start + take, filled + take
            if filled == piece_size:
                digests += piece.digest()
                piece, filled = hashlib.sha256(), 0
        if piece_count(size, piece_size) > MAX_PIECES:
            raise InvalidRequest("over %d pieces of %d bytes: choose a larger --piece-size"
                                 % (MAX_PIECES, piece_size))
    if filled:
        digests += piece.digest()
    return size, whole.hexdigest(), bytes(digests)


def to_xml(files: Sequence[File], generator: str = "") -> str:
    """Standard Metalink 4 XML for `files` (what aria2c and wget2 read)."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<metalink xmlns=%s>' % quoteattr(NAMESPACE)]
    if generator:
        lines.append("  <generator>%s</generator>" % escape(generator))
    for item in files:
        lines.append("  <file name=%s>" % quoteattr(item.name))
        if item.size is not None:
            lines.append("    <size>%d</size>" % item.size)
        lines += ['    <hash type="%s">%s</hash>' % pair for pair in item.hashes]
        for pieces in item.pieces:
            lines.append('    <pieces length="%d" type="%s">' % (pieces.length, pieces.type))
            lines += ["      <hash>%s</hash>" % pieces.digest(index).hex()
                      for index in range(pieces.count)]
            lines.append("    </pieces>")
        lines += ["    <url%s%s>%s</url>" % (
            "" if m.priority is None else ' priority="%d"' % m.priority,
            "" if m.location is None else ' location="%s"' % m.location, escape(m.url))
            for m in item.mirrors]
        lines.append("  </file>")
    lines.append("</metalink>")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command

def main(argv: Optional[Sequence[str]] = None) -> int:
    """make: 0, or 2 (usage, unreadable image); check: 0, or 98 (refused)."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        try:
            item = load(args.metalink, args.name)
        except MetalinkError as exc:
            print("rawfetch.metalink: %s" % exc, file=sys.stderr)
            return MetalinkError.exit_code
        print(_summary(item))
        return 0
    try:
        item = describe(args.image, args.url, args.piece_size, args.name)
    except InvalidRequest as exc:
        print("rawfetch.metalink: %s" % exc.message, file=sys.stderr)
        return 2
    except OSError as exc:  # not a transfer: an unreadable image is a usage error (2)
        print("rawfetch.metalink: cannot read %s: %s" % (args.image, exc.strerror or exc),
              file=sys.stderr)
        return 2
    from .. import __version__
    xml = to_xml([item], generator="rawfetch/%s" % __version__)
    sys.stdout.buffer.write(xml.encode("utf-8"))   # as declared, whatever the locale says
    sys.stdout.flush()
    return 0


def _parser() -> Any:
    import argparse
    from ..cliopts import size
    parser = argparse.ArgumentParser(prog="python3 -m rawfetch.metalink",
                                     description="Publish or check a Metalink 4 (RFC 5854).")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="write IMAGE's .meta4 to stdout")
    make.add_argument("image", metavar="IMAGE")
    make.add_argument("--url", action="append", required=True,
                      help="a mirror's http(s) URL of IMAGE; repeat in order of preference")
    make.add_argument("--piece-size", type=size, default=DEFAULT_PIECE_SIZE,
                      help="bytes a piece (K/M/G = powers of 1024; default 4M)")
    make.add_argument("--name", help="the file name in the Metalink (default: IMAGE's)")
    check = commands.add_parser("check", help="parse a .meta4 and summarise it")
    check.add_argument("metalink", metavar="META4")
    check.add_argument("--name", help="the file to choose when it lists several")
    return parser


def _summary(item: File) -> str:
    best = item.best_pieces()
    lines = ["name %s" % item.name, "size %s" % item.size,
             "checksum %s" % (item.checksum() or "none"),
             "pieces %s" % ("none" if best is None else
                            "%d x %d %s" % (best.count, best.length, best.type))]
    lines += ["mirror %s" % url for url in item.urls()]
    lines += ["skipped %s" % url for url in item.skipped_urls]
    return "\n".join(lines)
