"""Metalink 4 (RFC 5854) in: read a .meta4's mirrors, size, whole-file hashes and piece
hashes into frozen dataclasses, for the download to use and verify.

Reading is safe on hostile input: expat directly, a DOCTYPE (and so every DTD, entity
declaration and external entity) refused the moment it starts, never expanded; the
document, its piece list, URL list, text and nesting capped by the constants below; every
hash's hex length checked against its algorithm; the piece list checked against the size.
Every refusal is a MetalinkError (exit 98) naming the line. Nothing here touches the
network or the output: `load()` is the API the pipeline will call (docs/metalink.md).
Publishing (the make command) is in metalink/make.py; the command runs from metalink/__main__.py:

    python3 -m rawfetch.metalink make IMAGE --url URL [--url URL2 ...] [--piece-size 4M]
    python3 -m rawfetch.metalink check IMAGE.meta4 [--name NAME]
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, List, Optional, Tuple, Union
from xml.parsers import expat

from ..errors import InvalidRequest, MetalinkError
from ..url import MAX_URL_LENGTH, parse_url

NAMESPACE = "urn:ietf:params:xml:ns:metalink"     # RFC 5854 section 1.2
METALINK3_NAMESPACE = "http://www.metalinker.org/"  # the pre-RFC format: named, refused
# Room for MAX_PIECES sha-512 piece hashes (~150 bytes of XML each: 19 MiB) plus
# MAX_URLS mirrors; a larger document does not describe one image. Peak memory stays
# under ~3x this: expat holds an unfinished token (a comment, a tag) whole.
MAX_DOCUMENT_BYTES = 24 << 20
# Bytes fed to expat at a time: expat < 2.6 rescans an unfinished token at every feed
# (CVE-2023-52425), so a hostile 24 MiB token costs 24 rescans, not 384.
READ_CHUNK = 1 << 20
# 512 GiB in 4 MiB pieces (128 GiB in 1 MiB ones); the digests stay <= 8 MiB in memory.
MAX_PIECES = 1 << 17
MAX_URLS = 1024        # mirrors of all files together; each may cost a connection attempt
MAX_FILES = 1024       # <file> elements; a release tree has tens
MAX_DEPTH = 32         # nesting; RFC 5854 needs 4 (metalink/file/pieces/hash)
MAX_TEXT = MAX_URL_LENGTH  # characters of one element's text: the longest URL accepted
MAX_NAME = 4096        # a file name's characters: Linux's PATH_MAX
MAX_SIZE = (1 << 63) - 1   # off_t: no file system holds more (RFC 5854 4.2.14 sets none)
PRIORITY_RANGE = (1, 999999)   # RFC 5854 4.2.16.1: lower is preferred
# The encodings expat decodes natively (XML 1.0 4.3.3 requires only UTF-8 and UTF-16);
# the declaration is looked for in the first DECLARATION_BYTES.
EXPAT_ENCODINGS = ("utf-8", "utf-16", "utf-16le", "utf-16be", "iso-8859-1", "us-ascii")
DECLARATION_BYTES = 256

# RFC 5854 4.2.4: type names from IANA's "Hash Function Textual Names", hex-encoded.
# name -> (hashlib name, hex digits); strongest first. Other names are skipped, not used.
HASH_TYPES: Dict[str, Tuple[str, int]] = {
    "sha-512": ("sha512", 128), "sha-384": ("sha384", 96), "sha-256": ("sha256", 64),
    "sha-224": ("sha224", 56), "sha-1": ("sha1", 40), "md5": ("md5", 32),
}
_HEX = frozenset("0123456789abcdef")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")
_SCHEME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+-.")
Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


@dataclass(frozen=True)
class Mirror:
    """One <url> (RFC 5854 4.2.16): priority 1..999999 (None: unranked, tried last);
    location an ISO 3166-1 alpha-2 country code, lowercase, or None."""
    url: str
    priority: Optional[int] = None
    location: Optional[str] = None


@dataclass(frozen=True)
class Pieces:
    """<pieces type=T length=L> (RFC 5854 4.1.3): the digest of every L bytes of the file,
    in file order, the last piece shorter. Kept as one bytes blob: a tuple of 2^18 hex
    strings would cost ten times the memory."""
    type: str       # the RFC's name, e.g. "sha-256"
    length: int
    digests: bytes  # count * digest size

    @property
    def algorithm(self) -> str:
        return HASH_TYPES[self.type][0]

    @property
    def digest_size(self) -> int:
        return HASH_TYPES[self.type][1] // 2

    @property
    def count(self) -> int:
        return len(self.digests) // self.digest_size

    def digest(self, index: int) -> bytes:
        if not 0 <= index < self.count:
            raise IndexError("piece %d of %d" % (index, self.count))
        return self.digests[index * self.digest_size:(index + 1) * self.digest_size]

    def span(self, index: int, size: int) -> Tuple[int, int]:
        """(offset, length) of piece `index` in a file of `size` bytes."""
        self.digest(index)
        offset = index * self.length
        return offset, min(self.length, size - offset)


@dataclass(frozen=True)
class File:
    """One <file> (RFC 5854 4.1.2). `hashes`: (type, lowercase hex) in document order;
    `skipped_urls`: mirrors of other schemes (ftp, rsync...), never used."""
    name: str
    size: Optional[int] = None
    hashes: Tuple[Tuple[str, str], ...] = ()
    pieces: Tuple[Pieces, ...] = ()
    mirrors: Tuple[Mirror, ...] = ()
    skipped_urls: Tuple[str, ...] = ()

    def checksum(self) -> Optional[str]:
        """The strongest whole-file hash as rawfetch's checksum option ("sha256:HEX")."""
        known = dict(self.hashes)
        for kind in HASH_TYPES:
            if kind in known:
                return "%s:%s" % (HASH_TYPES[kind][0], known[kind])
        return None

    def best_pieces(self) -> Optional[Pieces]:
        """The piece list with the strongest hash, None without one."""
        ranked = sorted(self.pieces, key=lambda p: list(HASH_TYPES).index(p.type))
        return ranked[0] if ranked else None

    def urls(self) -> List[str]:
        """Mirror URLs by priority (RFC 5854 4.2.16.1), document order among equals."""
        last = PRIORITY_RANGE[1] + 1
        ranked = sorted(self.mirrors, key=lambda m: last if m.priority is None else m.priority)
        return [mirror.url for mirror in ranked]


@dataclass(frozen=True)
class Metalink:
    files: Tuple[File, ...]

    def choose(self, name: Optional[str] = None) -> File:
        """The file named `name`; without a name, the only file. Anything else is an error:
        rawfetch never guesses which of several images was meant."""
        names = [item.name for item in self.files]
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        if name is None:
            if len(self.files) != 1:
                raise MetalinkError("the Metalink describes %d files (%s): name one"
                                    % (len(names), shown))
            return self.files[0]
        found = [item for item in self.files if item.name == name]
        if len(found) != 1:
            what = "no file" if not found else "%d files" % len(found)
            raise MetalinkError("the Metalink has %s named %r (it has: %s)" % (what, name, shown))
        return found[0]


def load(source: Source, name: Optional[str] = None) -> File:
    """The file `name` (or the only file) of a Metalink 4 document: bytes, a path (str or
    PathLike) or a binary file object. Raises MetalinkError, nothing else."""
    return parse(source).choose(name)


def parse(source: Source) -> Metalink:
    """Every file of a Metalink 4 document, read in READ_CHUNK pieces: a hostile document
    is refused after at most MAX_DOCUMENT_BYTES, with the memory its limits allow."""
    reader = _Reader()
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = memoryview(source).cast("B")
        if len(data) > MAX_DOCUMENT_BYTES:
            raise MetalinkError("the Metalink is %d bytes, over the %d allowed"
                                % (len(data), MAX_DOCUMENT_BYTES))
        for start in range(0, len(data), READ_CHUNK):
            reader.feed(bytes(data[start:start + READ_CHUNK]))
        return reader.close()
    if isinstance(source, (str, os.PathLike)):
        return _parse_path(os.fspath(source), reader)
    if not callable(getattr(source, "read", None)):
        raise MetalinkError("a Metalink comes as bytes, a path or a binary file, not %s"
                            % type(source).__name__)
    return _parse_stream(source, reader, getattr(source, "name", "the Metalink"))


def _parse_path(path: str, reader: "_Reader") -> Metalink:
    try:
        handle = open(path, "rb")
    except OSError as exc:  # not a transfer: an unreadable Metalink is a refused one (98)
        raise MetalinkError("cannot read the Metalink %s: %s"
                            % (path, exc.strerror or exc)) from None
    with handle:
        return _parse_stream(handle, reader, path)


def _read(handle: IO[bytes], size: int, what: object) -> bytes:
    try:
        return handle.read(size)
    except OSError as exc:  # not a transfer: an unreadable Metalink is a refused one (98)
        raise MetalinkError("cannot read the Metalink %s: %s"
                            % (what, exc.strerror or exc)) from None


def _parse_stream(handle: IO[bytes], reader: "_Reader", what: object) -> Metalink:
    read = 0
    while True:
        chunk = _read(handle, min(READ_CHUNK, MAX_DOCUMENT_BYTES + 1 - read), what)
        if not chunk:
            return reader.close()
        read += len(chunk)
        if read > MAX_DOCUMENT_BYTES:
            raise MetalinkError("%s is over %d bytes: not a Metalink for one image"
                                % (what, MAX_DOCUMENT_BYTES))
        reader.feed(chunk)


# ---------------------------------------------------------------- reading, sans-IO

class _Refused(Exception):
    """Raised inside expat's callbacks; expat stops and feed() adds the line."""


@dataclass
class _FileState:
    name: str
    size: Optional[int] = None
    hashes: Dict[str, str] = field(default_factory=dict)
    pieces: List[Pieces] = field(default_factory=list)
    mirrors: List[Mirror] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


@dataclass
class _PiecesState:
    type: Optional[str]          # None: a type rawfetch does not know, hashes skipped
    length: int
    digests: bytearray = field(default_factory=bytearray)
    count: int = 0


class _Reader:
    """Bytes in (feed), a Metalink out (close). Only the elements rawfetch uses are
    collected; any other element, of this namespace or an extension's (RFC 5854
    section 6), is skipped with its text."""

    def __init__(self) -> None:
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.buffer_text = True
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        parser.ExternalEntityRefHandler = self._external
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        self._parser = parser
        self._stack: List[str] = []
        self._collect: Optional[List[str]] = None
        self._collected = 0
        self._attrs: Dict[str, str] = {}
        self._files: List[File] = []
        self._file: Optional[_FileState] = None
        self._pieces: Optional[_PiecesState] = None
        self._urls = 0
        self._head: Optional[bytes] = b""

    def feed(self, data: bytes, final: bool = False) -> None:
        if self._head is not None:   # until the XML declaration has been seen whole
            self._head += data
            if b"?>" not in self._head[:DECLARATION_BYTES] and \
                    len(self._head) < DECLARATION_BYTES and not final:
                return
            data, self._head = self._head, None
            _check_encoding(data[:DECLARATION_BYTES])
        try:
            self._parser.Parse(data, final)
        except _Refused as exc:
            raise MetalinkError("Metalink line %d: %s"
                                % (self._parser.CurrentLineNumber, exc)) from None
        except expat.ExpatError as exc:
            raise MetalinkError("not well-formed XML: %s" % exc) from None
        except (LookupError, UnicodeError, ValueError) as exc:  # pyexpat's codec path:
            raise MetalinkError("the XML's encoding cannot be read: %s" % exc) from None

    def close(self) -> Metalink:
        self.feed(b"", final=True)
        if not self._files:
            raise MetalinkError("the Metalink describes no file (RFC 5854 4.1.1: one or more)")
        return Metalink(tuple(self._files))

    # ---- refusals: a DTD is never read, so no entity can ever be expanded
    def _doctype(self, name: str, *_: Any) -> None:
        raise _Refused("a DOCTYPE (<!DOCTYPE %s>): DTDs and entities are refused, "
                       "Metalink 4 has none" % name)

    def _entity(self, name: str, *_: Any) -> None:
        raise _Refused("an entity declaration (%s) is refused" % name)

    def _external(self, *_: Any) -> int:
        raise _Refused("an external entity is refused")

    # ---- structure: only these exact paths from the root are read (_FILE, _PIECES...)
    def _start(self, tag: str, attrs: Dict[str, str]) -> None:
        self._stack.append(tag)
        path = tuple(self._stack)
        if len(path) > MAX_DEPTH:
            raise _Refused("elements nested over %d deep" % MAX_DEPTH)
        if len(path) == 1:
            _check_root(tag)
        elif self._collect is not None:
            raise _Refused("element <%s> inside <%s>" % (_local(tag), _local(path[-2])))
        elif path == _FILE:
            self._open_file(attrs)
        elif path == _PIECES:
            self._open_pieces(attrs)
        elif path[:-1] == _FILE and tag in _FILE_TEXT or path == _PIECE_HASH:
            self._begin_text(attrs)

    def _end(self, tag: str) -> None:
        path = tuple(self._stack)
        self._stack.pop()
        if self._collect is not None:
            text = "".join(self._collect).strip()
            self._collect = None
            self._element_text(path, text)
        elif path == _PIECES:
            self._close_pieces()
        elif path == _FILE:
            self._close_file()

    def _begin_text(self, attrs: Dict[str, str]) -> None:
        self._collect, self._collected, self._attrs = [], 0, attrs

    def _text(self, data: str) -> None:
        if self._collect is None:
            return
        self._collected += len(data)
        if self._collected > MAX_TEXT:
            raise _Refused("<%s> holds over %d characters" % (_local(self._stack[-1]), MAX_TEXT))
        self._collect.append(data)

    def _element_text(self, path: Tuple[str, ...], text: str) -> None:
        state, tag = self._file, path[-1]
        assert state is not None   # _start collects text only inside an open <file>
        if path == _PIECE_HASH:
            self._piece_hash(text)
        elif tag == _ns("size"):
            if state.size is not None:
                raise _Refused("a second <size>")
            state.size = _whole_number(text, "<size>", MAX_SIZE)
        elif tag == _ns("hash"):
            _add_hash(state.hashes, self._attrs.get("type", ""), text)
        else:
            self._add_url(state, text)

    # ---- <file>
    def _open_file(self, attrs: Dict[str, str]) -> None:
        if len(self._files) >= MAX_FILES:
            raise _Refused("more than %d <file> elements" % MAX_FILES)
        self._file = _FileState(check_name(attrs.get("name")))

    def _close_file(self) -> None:
        state = self._file
        assert state is not None
        self._file = None
        for pieces in state.pieces:
            _check_piece_count(pieces, state.size)
        if not state.mirrors:
            skipped = (": skipped %s" % ", ".join(state.skipped[:3])) if state.skipped else ""
            raise _Refused("file %r has no http(s) URL%s" % (state.name, skipped))
        self._files.append(File(state.name, state.size, tuple(state.hashes.items()),
                                tuple(state.pieces), tuple(state.mirrors),
                                tuple(state.skipped)))

    def _add_url(self, state: _FileState, text: str) -> None:
        self._urls += 1
        if self._urls > MAX_URLS:
            raise _Refused("more than %d URLs" % MAX_URLS)
        scheme, colon, _ = text.partition(":")
        scheme = scheme.lower()
        if colon and scheme and set(scheme) <= _SCHEME and scheme not in ("http", "https"):
            state.skipped.append(text[:200])   # ftp, rsync, file...: never fetched
            return
        state.mirrors.append(make_mirror(text, self._attrs.get("priority"),
                                         self._attrs.get("location"), _Refused))

    # ---- <pieces>
    def _open_pieces(self, attrs: Dict[str, str]) -> None:
        state = self._file
        assert state is not None
        kind = attrs.get("type", "").strip().lower()
        length = _whole_number(attrs.get("length", ""), "<pieces length>", MAX_SIZE)
        if length == 0:
            raise _Refused("<pieces length=\"0\">: a piece must be at least one byte")
        if kind in HASH_TYPES and any(p.type == kind for p in state.pieces):
            raise _Refused("a second <pieces type=%r>" % kind)
        self._pieces = _PiecesState(kind if kind in HASH_TYPES else None, length)
        if state.size is not None and piece_count(state.size, length) > MAX_PIECES:
            raise _Refused("%d bytes in pieces of %d make %d pieces, over the %d allowed"
                           % (state.size, length, piece_count(state.size, length), MAX_PIECES))

    def _piece_hash(self, text: str) -> None:
        pieces, state = self._pieces, self._file
        assert pieces is not None and state is not None
        pieces.count += 1
        limit = MAX_PIECES if state.size is None else piece_count(state.size, pieces.length)
        if pieces.count > min(limit, MAX_PIECES):
            raise _Refused("more piece hashes than %d" % min(limit, MAX_PIECES)
                           + ("" if state.size is None else " (%d bytes in pieces of %d)"
                              % (state.size, pieces.length)))
        if pieces.type is not None:
            pieces.digests += bytes.fromhex(_check_hex(pieces.type, text))

    def _close_pieces(self) -> None:
        pieces, state = self._pieces, self._file
        assert pieces is not None and state is not None
        self._pieces = None
        if pieces.type is not None:
            state.pieces.append(Pieces(pieces.type, pieces.length, bytes(pieces.digests)))


# ---------------------------------------------------------------- checks

def _ns(local: str) -> str:
    return NAMESPACE + " " + local


_FILE = (_ns("metalink"), _ns("file"))
_PIECES = _FILE + (_ns("pieces"),)
_PIECE_HASH = _PIECES + (_ns("hash"),)
_FILE_TEXT = (_ns("size"), _ns("hash"), _ns("url"))   # <file>'s children read as text


def _local(tag: str) -> str:
    return tag.rpartition(" ")[2]


def _check_encoding(head: bytes) -> None:
    """Only the encodings expat decodes itself: any other name would make pyexpat run a
    Python codec of the document's choosing on its bytes (rot13, idna, utf-7...). The
    declaration is read as expat will read it: UTF-16 by its BOM or its NULs (XML 1.0 F.1)."""
    utf16 = {b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be", b"<\x00": "utf-16-le",
             b"\x00<": "utf-16-be"}.get(head[:2])
    text = head.decode(utf16 or "latin-1", "replace").lstrip("\ufeff\u00ef\u00bb\u00bf")
    found = re.match(r"<\?xml[^>]*?\sencoding\s*=\s*[\"']([^\"']*)", text)
    name = found.group(1).lower() if found else "utf-8"
    if name not in EXPAT_ENCODINGS:
        raise MetalinkError("the XML declares encoding %r: only %s are read"
                            % (name[:40], ", ".join(EXPAT_ENCODINGS)))


def _check_root(tag: str) -> None:
    if tag == _ns("metalink"):
        return
    namespace, _, local = tag.rpartition(" ")
    if namespace == METALINK3_NAMESPACE:
        raise _Refused("a Metalink 3 document (%s): only Metalink 4, RFC 5854, is read"
                       % METALINK3_NAMESPACE)
    raise _Refused("the root element is <%s>%s, not RFC 5854's <metalink xmlns=%r>"
                   % (local, " in namespace %r" % namespace if namespace else "", NAMESPACE))


def _whole_number(text: str, what: str, maximum: int) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > maximum:
        raise _Refused("%s %r is not a whole number from 0 to %d" % (what, text[:40], maximum))
    return int(text)


def _check_hex(kind: str, text: str) -> str:
    """RFC 5854 4.2.4: a hash is hex of exactly its algorithm's length."""
    value = text.lower()
    want = HASH_TYPES[kind][1]
    if len(value) != want or not set(value) <= _HEX:
        raise _Refused("a %s hash must be %d hex digits, not %r" % (kind, want, text[:140]))
    return value


def _add_hash(hashes: Dict[str, str], kind: str, text: str) -> None:
    kind = kind.strip().lower()
    if kind not in HASH_TYPES:
        return   # an algorithm rawfetch cannot compute: skipped, as RFC 5854 allows
    value = _check_hex(kind, text)
    if hashes.setdefault(kind, value) != value:
        raise _Refused("two different %s hashes for one file" % kind)


def piece_count(size: int, length: int) -> int:
    """How many pieces of `length` bytes a file of `size` bytes has (the last shorter)."""
    return -(-size // length)


def _check_piece_count(pieces: Pieces, size: Optional[int]) -> None:
    if size is None:
        raise _Refused("<pieces> without <size>: the piece list cannot be checked")
    if pieces.count != piece_count(size, pieces.length):
        raise _Refused("%d %s piece hashes for %d bytes in pieces of %d (want %d)"
                       % (pieces.count, pieces.type, size, pieces.length,
                          piece_count(size, pieces.length)))


def check_name(name: Optional[str], error: Callable[[str], Exception] = _Refused) -> str:
    """RFC 5854 4.1.2.1: a relative path without traversal. Also refused: controls,
    backslashes and a leading '~' (wget's home-path case), empty components."""
    if not name:
        raise error("a <file> without a name attribute")
    parts = name.split("/")
    bad = (len(name) > MAX_NAME or name.startswith(("/", "~"))
           or any(part in ("", ".", "..") for part in parts)
           or any(char < " " or char in "\x7f\\" for char in name))
    if bad:
        raise error("unsafe file name %r: a relative path without '.', '..', empty "
                    "components, backslashes or controls is required" % name[:200])
    return name


def make_mirror(url: str, priority: Optional[str], location: Optional[str],
                error: Callable[[str], Exception] = _Refused) -> Mirror:
    """A checked Mirror: an absolute http(s) URL rawfetch can request."""
    try:
        parse_url(url)
    except InvalidRequest as exc:
        raise error("URL %r: %s" % (url[:200], exc.message)) from None
    rank = None
    if priority is not None:
        rank = _whole_number(priority, "priority", PRIORITY_RANGE[1])
        if rank < PRIORITY_RANGE[0]:
            raise error("priority 0: RFC 5854 4.2.16.1 ranks from 1 to 999999")
    place = None
    if location is not None:
        place = location.strip().lower()
        if len(place) != 2 or not set(place) <= _LETTERS:
            raise error("location %r is not an ISO 3166-1 alpha-2 code" % location[:40])
    return Mirror(url, rank, place)

