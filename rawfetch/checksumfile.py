"""Checksum files published next to images (SHA256SUMS, CHECKSUM, *.sha256): find the
image's entry and return (algorithm, hex) for the download to verify.

Accepted lines: GNU coreutils `HEX  NAME` / `HEX *NAME` (and the escaped form coreutils
writes for names holding a backslash, newline or CR: a leading backslash), BSD tagged
`ALGO (NAME) = HEX` (any hashlib algorithm), or a file holding one bare hash. Blank lines,
`#` comments, CRLF and lines that parse as none of these (a PGP clear-signature's armour,
Fedora's `# name: size` notes) are skipped. The ironic agent accepts the same formats.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from .errors import ChecksumFileError

# A release directory's SHA256SUMS is a few KiB; 1 MiB bounds a wrong URL (an image, an
# endless body) without limiting any real list (Debian's SHA512SUMS of every CD: ~20 KiB).
CHECKSUM_FILE_MAX_BYTES = 1 << 20
# Untagged lines: the algorithm from the hex length (ironic-python-agent's rule, with
# sha224/sha384 added: coreutils writes them untagged too and no other common hash clashes).
ALGO_BY_HEX_LENGTH = {32: "md5", 40: "sha1", 56: "sha224", 64: "sha256", 96: "sha384",
                      128: "sha512"}
_UNESCAPE = {"\\\\": "\\", "\\n": "\n", "\\r": "\r"}   # coreutils' escapes in file names


class Entry(NamedTuple):
    algo: Optional[str]    # from a BSD tag, as written; None for untagged lines
    name: Optional[str]    # None for a bare hash
    hexdigest: str         # lowercase
    line: int


def image_name_from_url(url: str) -> str:
    """The last path segment of `url`, percent-decoded ('' for a URL ending in '/')."""
    from urllib.parse import unquote, urlsplit
    path = urlsplit(url).path
    return unquote(path.rpartition("/")[2], errors="surrogateescape")


def _same_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _unescape(name: str) -> Optional[str]:
    out: List[str] = []
    index = 0
    while index < len(name):
        if name[index] == "\\":
            pair = name[index:index + 2]
            if pair not in _UNESCAPE:
                return None   # not something coreutils writes: not an entry
            out.append(_UNESCAPE[pair])
            index += 2
        else:
            out.append(name[index])
            index += 1
    return "".join(out)


def _parse_line(text: str, number: int) -> Optional[Entry]:
    """One line -> Entry, or None when it is not a checksum line."""
    import re
    escaped = text.startswith("\\")
    body = text[1:] if escaped else text
    tagged = re.match(r"([A-Za-z0-9][A-Za-z0-9_-]*) ?\((.*)\) ?= ?([0-9A-Fa-f]+)\Z",
                      body.rstrip())
    if tagged:
        algo, name, hexdigest = tagged.groups()
    else:
        untagged = re.match(r"([0-9A-Fa-f]+)(?: [ *]?(.*))?\Z", body)
        if not untagged or len(untagged.group(1)) not in ALGO_BY_HEX_LENGTH:
            return None
        algo, (hexdigest, name) = None, untagged.groups()
        if name is not None and not name.strip():
            name = None   # a bare hash with trailing blanks
        if name is None and escaped:
            return None
    if escaped and name is not None:
        name = _unescape(name)
        if name is None:
            return None
    return Entry(algo, name, hexdigest.lower(), number)


def parse_entries(data: bytes) -> List[Entry]:
    """Every checksum line of the file, in order (see the module docstring)."""
    text = data.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]   # a BOM from an editor on Windows
    entries = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry = _parse_line(line.lstrip(), number)   # coreutils skips leading blanks too
        if entry is not None:
            entries.append(entry)
    return entries


def hashlib_name(tag: str) -> Optional[str]:
    """A BSD tag (SHA256, BLAKE2b, SHA3-256...) as hashlib names it, or None."""
    import hashlib
    lowered = tag.lower()
    for candidate in (lowered, lowered.replace("-", "_"), lowered.replace("-", "")):
        if candidate in hashlib.algorithms_available:
            return candidate
    return None


def _resolve(entry: Entry, where: str, name: str) -> Tuple[str, str]:
    """(hashlib algorithm, hex) of the entry for `name`, its digest length checked."""
    if entry.algo is None:
        return ALGO_BY_HEX_LENGTH[len(entry.hexdigest)], entry.hexdigest
    algo = hashlib_name(entry.algo)
    if algo is None:
        raise ChecksumFileError("%s line %d, the entry for %r: algorithm %s is not supported "
                                "by this Python's hashlib" % (where, entry.line, name,
                                                               entry.algo))
    import hashlib
    expected = 2 * hashlib.new(algo).digest_size
    if len(entry.hexdigest) != expected:
        raise ChecksumFileError("%s line %d, the entry for %r: a %s digest has %d hex "
                                "digits, not %d" % (where, entry.line, name, entry.algo,
                                                    expected, len(entry.hexdigest)))
    return algo, entry.hexdigest


def _strongest(found: Dict[str, str]) -> Tuple[str, str]:
    """Several algorithms for one name: the longest digest wins (sha512 over sha256 over
    md5), ties by name, so the choice never depends on line order."""
    algo = max(found, key=lambda name: (len(found[name]), name))
    return algo, found[algo]


def parse_checksum_file(data: bytes, name: str, url: str) -> Tuple[str, str]:
    """(algorithm, lowercase hex) for the image called `name` in the checksum file `data`
    fetched from `url`. No matching entry, two different hashes of one algorithm for the
    name, or nothing parseable -> ChecksumFileError (exit 94) naming url and name."""
    where = "checksum file %s" % url
    entries = parse_entries(data)
    if not entries:
        raise ChecksumFileError("%s: nothing in it parses as a checksum (looked for %r)"
                                % (where, name))
    named = [e for e in entries if e.name is not None]
    wanted = _same_name(name)
    matches = [e for e in named if _same_name(e.name or "") == wanted]
    if not named:
        matches = entries   # a file holding one bare hash applies to any name
    if not matches:
        hint = "" if name else " (the image URL has no file name: give --checksum-name)"
        raise ChecksumFileError("%s has no entry for %r%s; it lists %s" % (
            where, name, hint, ", ".join(repr(e.name)[:80] for e in named[:5])
            + (", ..." if len(named) > 5 else "")))
    found: Dict[str, str] = {}
    for entry in matches:
        algo, hexdigest = _resolve(entry, where, name)
        if found.setdefault(algo, hexdigest) != hexdigest:
            raise ChecksumFileError("%s lists two different %s hashes for %r (line %d)"
                                    % (where, algo, name, entry.line))
    return _strongest(found)


def read_limited(reader: Any, limit: int) -> bytes:
    """Up to `limit` bytes from anything with readinto() (a Stream), stopping at its end:
    one buffer of `limit` bytes, never more."""
    buffer = bytearray(limit)
    view = memoryview(buffer)
    filled = 0
    while filled < limit:
        got = reader.readinto(view[filled:])
        if not got:
            break
        filled += got
    view.release()
    del buffer[filled:]
    return bytes(buffer)


def fetch_checksum(url: str, name: str, read: Callable[[int], bytes]) -> Tuple[str, str]:
    """(algorithm, hex) for `name` from the checksum file at `url`. `read(limit)` returns
    the file's bytes, at most `limit` of them (the engine with the job's retry budget and
    max_time; read_limited() over an open stream does it): a file reaching the limit is
    larger than CHECKSUM_FILE_MAX_BYTES and refused."""
    data = read(CHECKSUM_FILE_MAX_BYTES + 1)
    if len(data) > CHECKSUM_FILE_MAX_BYTES:
        raise ChecksumFileError("checksum file %s is larger than %s bytes: not a checksum "
                                "list (looked for %r)" % (url, format(CHECKSUM_FILE_MAX_BYTES,
                                                                      ","), name))
    return parse_checksum_file(data, name, url)
