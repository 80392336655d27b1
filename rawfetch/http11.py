"""HTTP/1.1 wire protocol for one request/response, with no I/O (in the spirit of h11).

The connection layer feeds received bytes in; these classes say what they mean.
Policy (see README "Security model"):
  * head lines may end in CRLF or bare LF (RFC 9112 s2.2 allows it); a bare CR is an error;
  * obs-fold (a field line continued on a line starting with SP/HTAB) is unfolded into one
    SP (RFC 9112 s5.2), except in Content-Length and Transfer-Encoding: refused there;
  * chunked framing requires exact CRLF everywhere (h11 CVE-2025-43859), a bare hex chunk
    size and well-formed chunk extensions (RFC 9112 s7.1, s7.1.1);
  * a status line without a reason phrase ("HTTP/1.1 200") is accepted;
  * bytes after a complete body are never read or delivered.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

from .errors import IncompleteBody, InvalidRequest, ProtocolError
from .redact import MASK, SECRET_HEADERS

MAX_LINE = 16384           # one head line; h11's default cap for a whole incomplete head
MAX_HEAD = 65536           # one response head; CPython http.client's per-line cap (_MAXLINE)
MAX_HEADERS = 100          # header fields per head; CPython http.client _MAXHEADERS (CVE-2021-3737)
MAX_INTERIM = 10           # 1xx responses skipped before the final one (CVE-2021-3737: endless 100s)
MAX_LENGTH_DIGITS = 19     # Content-Length < 10**19 fits curl's 64-bit curl_off_t
MAX_CHUNK_SIZE_DIGITS = 16  # 64-bit chunk size; longer is an overflow attempt (wget CVE-2017-13089)
MAX_CHUNK_LINE = 4096      # chunk-size line including extensions (curl caps extensions too)
MAX_TRAILER_BYTES = 16384  # all trailer lines together (curl CVE-2023-38039: unbounded headers)
MERGE_BELOW = 4096         # chunk data pieces smaller than this are copied together: 1-byte
                           # chunks must not cost a memoryview object per body byte

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TOKEN_BYTES = bytes(sorted(_TOKEN))
# Field values: HTAB, visible ASCII, SP and obs-text (RFC 9110 s5.5); everything else is a CTL.
_VALUE_BYTES = bytes([9] + list(range(32, 127)) + list(range(128, 256)))
_HEX_BYTES = b"0123456789abcdefABCDEF"
_DIGITS = "0123456789"
NO_BODY_STATUSES = frozenset((204, 304))
# RFC 9112 s5.2 lets a recipient unfold obs-fold; in these framing fields a fold is refused:
# a peer on the path that does not unfold reads another body length (request smuggling).
FOLD_REFUSED = frozenset((b"content-length", b"transfer-encoding"))
USER_AGENT = "rawfetch/0.1"   # sent to origins and, in CONNECT, to proxies


class Headers:
    """Case-insensitive, order-keeping, multi-valued header list (values as latin-1 str)."""

    __slots__ = ("_items",)

    def __init__(self, items: Optional[List[Tuple[str, str]]] = None) -> None:
        self._items = list(items or [])

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """All values of `name` joined by ", " (RFC 9110 s5.3), or default."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> List[str]:
        lower = name.lower()
        return [value for key, value in self._items if key.lower() == lower]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def items(self) -> List[Tuple[str, str]]:
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return "Headers(%r)" % self._items


class ResponseHead:
    """Status line and header fields of the final (non-1xx) response."""

    __slots__ = ("version", "status", "reason", "headers", "interim")

    def __init__(self, version: str, status: int, reason: str, headers: Headers,
                 interim: int = 0) -> None:
        self.version, self.status, self.reason = version, status, reason
        self.headers, self.interim = headers, interim

    def __repr__(self) -> str:
        return "ResponseHead(%s %d %r, %d headers)" % (
            self.version, self.status, self.reason, len(self.headers))


# ---------------------------------------------------------------- request side

def _check_token(value: str, what: str) -> None:
    raw = value.encode("latin-1", "replace") if value.isascii() else b"\x00"
    if not raw or raw.translate(None, _TOKEN_BYTES):
        raise InvalidRequest("%s %r is not a valid HTTP token" % (what, value))


def _check_value(value: str, what: str, secret: bool = False) -> bytes:
    shown = repr(MASK) if secret else repr(value)   # a credential is never echoed
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidRequest("%s %s is not latin-1 text" % (what, shown)) from None
    if raw.translate(None, _VALUE_BYTES):
        raise InvalidRequest("%s %s contains a control character (CR, LF, NUL...)"
                             % (what, shown))
    return raw.strip(b" \t")


def _check_target(target: str, what: str) -> None:
    """A request target (or CONNECT authority) is visible ASCII only (RFC 9112 s3.2)."""
    if not target or not target.isascii() or any(c <= " " or c == "\x7f" for c in target):
        raise InvalidRequest("%s %r contains spaces or controls" % (what, target))


def _serialize(method: str, target: str, fields: List[Tuple[str, bytes]]) -> bytes:
    """The request head on the wire: request line, field lines, blank line (RFC 9112 s2.1).
    Every part was checked by the caller: nothing here can inject a CR or LF."""
    lines = [b"%s %s HTTP/1.1" % (method.encode("ascii"), target.encode("ascii"))]
    lines += [b"%s: %s" % (name.encode("ascii"), raw) for name, raw in fields]
    return b"\r\n".join(lines + [b"", b""])


_FORBIDDEN_REQUEST_HEADERS = frozenset(("content-length", "transfer-encoding", "connection",
                                        "accept-encoding", "te", "upgrade"))


def build_request(method: str, target: str, host: str,
                  headers: Optional[List[Tuple[str, str]]] = None,
                  user_agent: str = "rawfetch") -> bytes:
    """Serialize a body-less request; raise InvalidRequest before anything is sent.

    rawfetch always asks for `identity` (it never decodes content) and `Connection: close`
    (one request per connection: every attempt starts clean).
    """
    _check_token(method, "method")
    _check_target(target, "request target")
    agent_raw = _check_value(user_agent, "User-Agent")
    host_raw = _check_value(host, "Host")
    if not host_raw or b" " in host_raw or b"\t" in host_raw:
        raise InvalidRequest("invalid Host %r" % host)
    fields: Dict[str, Tuple[str, bytes]] = {
        "host": ("Host", host_raw), "user-agent": ("User-Agent", agent_raw),
        "accept": ("Accept", b"*/*")}
    for name, value in headers or []:
        _check_token(name, "header name")
        raw = _check_value(value, "header %s" % name, name.lower() in SECRET_HEADERS)
        if name.lower() in _FORBIDDEN_REQUEST_HEADERS:
            raise InvalidRequest("header %s is managed by rawfetch and cannot be set" % name)
        fields[name.lower()] = (name, raw)
    managed = [("Accept-Encoding", b"identity"), ("Connection", b"close")]
    return _serialize(method, target, list(fields.values()) + managed)


def build_connect(host: str, port: int, user_agent: str,
                  proxy_authorization: Optional[str] = None) -> bytes:
    """`CONNECT host:port` to a proxy (RFC 9110 s9.3.6), with the checks every request
    gets; its only credential is the proxy's own, never the origin's."""
    if not host:   # RFC 9110 s9.3.6: the authority-form names a host
        raise InvalidRequest("CONNECT needs a host")
    authority = "%s:%d" % ("[%s]" % host if ":" in host else host, port)
    _check_target(authority, "CONNECT authority")
    fields = [("Host", authority), ("User-Agent", user_agent),
              ("Proxy-Connection", "Keep-Alive")]
    if proxy_authorization is not None:
        fields.append(("Proxy-Authorization", proxy_authorization))
    return _serialize("CONNECT", authority, [
        (name, _check_value(value, "header %s" % name, True)) for name, value in fields])


# ---------------------------------------------------------------- response head

class HeadParser:
    """Accumulates bytes until a final response head is complete, skipping 1xx heads.

    feed() returns (head, leftover) once complete, else (None, b""). The result is the
    same whether bytes arrive whole or one at a time.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan = 0          # where the next unparsed line starts
        self._lines: List[bytes] = []
        self._interim = 0
        self._head_bytes = 0

    def feed(self, data: bytes) -> Tuple[Optional[ResponseHead], bytes]:
        self._buf += data
        while True:
            if not self._lines:  # at the start of a (possibly interim) response
                start = bytes(self._buf[self._scan:self._scan + 5])
                if not b"HTTP/".startswith(start):
                    raise ProtocolError("response does not start with HTTP/ "
                                        "(garbage or HTTP/0.9)")
            end = self._buf.find(b"\n", self._scan)
            if end < 0:
                self._check_partial()
                return None, b""
            line = bytes(self._buf[self._scan:end])
            self._scan = end + 1
            self._account(len(line) + 1)
            if line.endswith(b"\r"):
                line = line[:-1]
            if b"\r" in line:
                raise ProtocolError("bare CR in response head")
            if line:
                self._add_line(line)
                continue
            head = self._finish_head()
            if head is not None:
                leftover = bytes(self._buf[self._scan:])
                self._buf = bytearray()
                return head, leftover

    def _check_partial(self) -> None:
        if self._buf.find(b"\r", self._scan, len(self._buf) - 1) >= 0:
            raise ProtocolError("bare CR in response head")  # RFC 9112 s2.2, known before LF
        pending = len(self._buf) - self._scan
        if pending > MAX_LINE:
            raise ProtocolError("response header line longer than %d bytes" % MAX_LINE)
        if self._head_bytes + pending > MAX_HEAD:
            raise ProtocolError("response head larger than %d bytes" % MAX_HEAD)
        if self._scan > 65536:  # keep the buffer from growing with consumed lines
            del self._buf[:self._scan]
            self._scan = 0

    def _account(self, size: int) -> None:
        if size - 1 > MAX_LINE:
            raise ProtocolError("response header line longer than %d bytes" % MAX_LINE)
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD:
            raise ProtocolError("response head larger than %d bytes" % MAX_HEAD)

    def _add_line(self, line: bytes) -> None:
        if not self._lines:
            parse_status_line(line)  # refuse a bad status line before reading on
            self._lines.append(line)
            return
        if line[:1] in (b" ", b"\t"):
            self._lines[-1] = unfold(self._lines[-1], line, len(self._lines) > 1)
            return
        if len(self._lines) > MAX_HEADERS:
            raise ProtocolError("more than %d response header fields" % MAX_HEADERS)
        self._lines.append(line)

    def _finish_head(self) -> Optional[ResponseHead]:
        if not self._lines:
            raise ProtocolError("empty line where a status line was expected")
        version, status, reason = parse_status_line(self._lines[0])
        headers = Headers([parse_header_line(line) for line in self._lines[1:]])
        self._lines = []
        self._head_bytes = 0
        if status >= 200:
            return ResponseHead(version, status, reason, headers, self._interim)
        if status == 101:
            raise ProtocolError("unexpected 101 Switching Protocols")
        self._interim += 1
        if self._interim > MAX_INTERIM:
            raise ProtocolError("more than %d interim 1xx responses" % MAX_INTERIM)
        return None


def parse_status_line(line: bytes) -> Tuple[str, int, str]:
    """`HTTP/1.x SP 3DIGIT [SP reason]`; a missing reason phrase is accepted."""
    version = line[:8]
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ProtocolError("unsupported or malformed status line %r" % line[:40])
    code, rest = line[9:12], line[12:]
    if line[8:9] != b" " or len(code) != 3 or not code.isdigit() or rest[:1] not in (b"", b" "):
        raise ProtocolError("malformed status line %r" % line[:40])
    status = int(code)
    if not 100 <= status <= 599:
        raise ProtocolError("status code %d out of range" % status)
    reason = rest[1:]
    if reason.translate(None, _VALUE_BYTES):
        raise ProtocolError("control character in reason phrase")
    return version.decode("ascii"), status, reason.decode("latin-1")


def unfold(previous: bytes, line: bytes, in_field: bool) -> bytes:
    """Join an obs-fold continuation `line` onto the field line before it, the fold
    (OWS CRLF RWS) becoming one SP (RFC 9112 s5.2); refused in framing fields."""
    if not in_field:  # RFC 9112 s2.2: whitespace before the first field line
        raise ProtocolError("whitespace-led line before the first header field")
    name = previous.partition(b":")[0]
    if name.lower() in FOLD_REFUSED:
        raise ProtocolError("obsolete line folding in %s (a framing field: refused, "
                            "RFC 9112 s5.2 and s6.3)" % name.decode("latin-1"))
    return previous.rstrip(b" \t") + b" " + line.lstrip(b" \t")


def parse_header_line(line: bytes) -> Tuple[str, str]:
    name, colon, value = line.partition(b":")
    if not colon:
        raise ProtocolError("header line without a colon: %r" % line[:40])
    if not name or name.translate(None, _TOKEN_BYTES):
        raise ProtocolError("invalid header name %r" % name[:40])
    value = value.strip(b" \t")
    if value.translate(None, _VALUE_BYTES):
        raise ProtocolError("control character in header %s" % name.decode("ascii"))
    return name.decode("ascii"), value.decode("latin-1")


# ---------------------------------------------------------------- chunk extensions

_QDTEXT = frozenset([9, 32, 0x21] + list(range(0x23, 0x5C)) + list(range(0x5D, 0x7F))
                    + list(range(0x80, 0x100)))                    # RFC 9110 s5.6.4
_QUOTABLE = frozenset([9] + list(range(0x20, 0x7F)) + list(range(0x80, 0x100)))


def check_chunk_ext(ext: bytes) -> None:
    """Raise unless `ext` is *( BWS ";" BWS name [ BWS "=" BWS value ] ), name a token and
    value a token or quoted-string (RFC 9112 s7.1.1). The extensions themselves are unused."""
    pos = 0
    while pos < len(ext):
        pos = _skip_bws(ext, pos)
        if ext[pos:pos + 1] != b";":
            raise ProtocolError("malformed chunk extension %r" % ext[:40])
        pos = _token_end(ext, _skip_bws(ext, pos + 1))
        after = _skip_bws(ext, pos)
        if ext[after:after + 1] == b"=":
            pos = _skip_bws(ext, after + 1)
            if ext[pos:pos + 1] == b'"':
                pos = _quoted_end(ext, pos + 1)
            else:
                pos = _token_end(ext, pos)


def _skip_bws(data: bytes, pos: int) -> int:
    while data[pos:pos + 1] in (b" ", b"\t"):
        pos += 1
    return pos


def _token_end(ext: bytes, pos: int) -> int:
    start = pos
    while pos < len(ext) and ext[pos] in _TOKEN:
        pos += 1
    if pos == start:
        raise ProtocolError("malformed chunk extension %r: a token expected" % ext[:40])
    return pos


def _quoted_end(data: bytes, pos: int) -> int:
    """The end of a quoted-string whose opening DQUOTE is just before `pos`."""
    while pos < len(data):
        byte = data[pos]
        if byte == 0x22:
            return pos + 1
        if byte == 0x5C and pos + 1 < len(data) and data[pos + 1] in _QUOTABLE:
            pos += 2
        elif byte in _QDTEXT:
            pos += 1
        else:
            break
    raise ProtocolError("malformed quoted string in chunk extension %r" % data[:40])


# ---------------------------------------------------------------- body framing

def _content_length(headers: Headers) -> Optional[int]:
    values = [part.strip(" \t") for value in headers.get_all("content-length")
              for part in value.split(",")]
    if not values:
        return None
    for value in values:
        if not value or len(value) > MAX_LENGTH_DIGITS or value.strip(_DIGITS):
            raise ProtocolError("invalid Content-Length %r" % value[:40])
    if len(set(int(v) for v in values)) != 1:
        raise ProtocolError("conflicting Content-Length values %r" % values[:4])
    return int(values[0])


def body_reader(method: str, head: ResponseHead) -> "BodyReader":
    """Choose the body framing (RFC 9112 s6.3) and return its reader."""
    headers = head.headers
    if method == "HEAD" or head.status in NO_BODY_STATUSES:
        return NoBodyReader()
    transfer = headers.get_all("transfer-encoding")
    length = _content_length(headers)
    if transfer:
        codings = [c.strip(" \t").lower() for v in transfer for c in v.split(",")]
        if head.version == "HTTP/1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 response")
        if codings != ["chunked"]:
            raise ProtocolError("unsupported Transfer-Encoding %r" % ", ".join(transfer)[:60])
        if length is not None:
            raise ProtocolError("both Content-Length and Transfer-Encoding (request smuggling shape)")
        return ChunkedReader()
    if length is not None:
        return ContentLengthReader(length)
    return CloseDelimitedReader()


class BodyReader:
    """Common interface. `passthrough` readers' wire bytes are body bytes: the caller may
    recv straight into its own buffer, asking limit() first and reporting consumed()."""

    passthrough = True
    complete = False
    length: Optional[int] = None
    received = 0

    def limit(self, size: int) -> int:
        return size

    def consumed(self, size: int) -> None:
        self.received += size

    def feed(self, data: bytes) -> List[memoryview]:
        """Return the body bytes contained in `data` (for any framing)."""
        view = memoryview(data)
        size = self.limit(len(view))
        self.consumed(size)
        return [view[:size]] if size else []

    def eof(self) -> None:
        """The peer closed the connection: complete, or raise IncompleteBody."""
        raise NotImplementedError


class NoBodyReader(BodyReader):
    complete = True
    length = 0

    def limit(self, size: int) -> int:
        return 0

    def eof(self) -> None:
        return None


class ContentLengthReader(BodyReader):
    def __init__(self, length: int) -> None:
        self.length = length
        self.received = 0
        self.complete = length == 0

    def limit(self, size: int) -> int:
        return min(size, self.length - self.received)

    def consumed(self, size: int) -> None:
        self.received += size
        self.complete = self.received >= self.length

    def eof(self) -> None:
        if not self.complete:
            raise IncompleteBody(
                "server closed the connection after %s of %s bytes"
                % (format(self.received, ","), format(self.length, ",")),
                received=self.received, expected=self.length, offset=self.received)


class CloseDelimitedReader(BodyReader):
    """No length given: the body is whatever arrives until the server closes."""

    def eof(self) -> None:
        self.complete = True


_SIZE, _DATA, _DATA_CR, _DATA_LF, _TRAILER, _DONE = range(6)


def _flush(out: List[memoryview], small: bytearray) -> None:
    """Move the merged small pieces to `out` as one view."""
    if small:
        out.append(memoryview(bytes(small)))
        del small[:]


class ChunkedReader(BodyReader):
    """Strict chunked decoder with bounded lines, extensions and trailers."""

    passthrough = False

    def __init__(self) -> None:
        self.received = 0
        self._state = _SIZE
        self._line = bytearray()
        self._remaining = 0
        self._trailer_bytes = 0
        self._trailer_count = 0

    def limit(self, size: int) -> int:  # never recv past framing directly
        return 0

    def feed(self, data: bytes) -> List[memoryview]:
        view = memoryview(data)
        out: List[memoryview] = []
        small = bytearray()  # consecutive small data pieces, copied together
        pos, end = 0, len(view)
        while pos < end and self._state != _DONE:
            if self._state == _DATA:
                take = min(self._remaining, end - pos)
                if take < MERGE_BELOW:
                    small += view[pos:pos + take]
                else:
                    _flush(out, small)
                    out.append(view[pos:pos + take])
                pos += take
                self._remaining -= take
                self.received += take
                if not self._remaining:
                    self._state = _DATA_CR
            elif self._state in (_DATA_CR, _DATA_LF):
                expected = 13 if self._state == _DATA_CR else 10
                if view[pos] != expected:
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 1
                self._state = _DATA_LF if self._state == _DATA_CR else _SIZE
            else:
                pos = self._take_line(view, pos, end)
        _flush(out, small)
        return out

    def _take_line(self, view: memoryview, pos: int, end: int) -> int:
        cap = MAX_CHUNK_LINE if self._state == _SIZE else MAX_TRAILER_BYTES
        newline = bytes(view[pos:min(end, pos + cap + 2)]).find(b"\n")
        if newline < 0:
            self._line += view[pos:min(end, pos + cap + 2)]
            if len(self._line) > cap + 1:
                raise ProtocolError(self._too_long())
            return end
        self._line += view[pos:pos + newline + 1]
        if len(self._line) > cap + 2:
            raise ProtocolError(self._too_long())
        line = bytes(self._line)
        self._line = bytearray()
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise ProtocolError("chunk framing line not terminated by CRLF")
        if self._state == _SIZE:
            self._size_line(line[:-2])
        else:
            self._trailer_line(line[:-2], len(line))
        return pos + newline + 1

    def _too_long(self) -> str:
        if self._state == _SIZE:
            return "chunk size line longer than %d bytes" % MAX_CHUNK_LINE
        return "chunked trailers larger than %d bytes" % MAX_TRAILER_BYTES

    def _size_line(self, line: bytes) -> None:
        """chunk-size [ chunk-ext ] (RFC 9112 s7.1): whitespace only before a ';'."""
        extension = line.lstrip(_HEX_BYTES)
        size_text = line[:len(line) - len(extension)]
        if not size_text or (extension and extension.lstrip(b" \t")[:1] != b";"):
            raise ProtocolError("invalid chunk size %r" % line[:20])
        if len(size_text) > MAX_CHUNK_SIZE_DIGITS:
            raise ProtocolError("chunk size has more than %d hex digits" % MAX_CHUNK_SIZE_DIGITS)
        check_chunk_ext(extension)
        self._remaining = int(size_text, 16)
        self._state = _DATA if self._remaining else _TRAILER

    def _trailer_line(self, line: bytes, size: int) -> None:
        self._trailer_bytes += size
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise ProtocolError(self._too_long())
        if not line:
            self._state = _DONE
            self.complete = True
            return
        if line[:1] in (b" ", b"\t"):  # obs-fold continues the field before (RFC 9112
            if not self._trailer_count or line.translate(None, _VALUE_BYTES):   # s5.2)
                raise ProtocolError("malformed folded trailer line")
            return                      # discarded like the field it continues
        self._trailer_count += 1
        if self._trailer_count > MAX_HEADERS:
            raise ProtocolError("more than %d trailer fields" % MAX_HEADERS)
        parse_header_line(line)  # validated, then discarded: rawfetch uses no trailers

    def eof(self) -> None:
        if self._state != _DONE:
            raise IncompleteBody(
                "server closed the connection in the middle of a chunked body after %s bytes"
                % format(self.received, ","), received=self.received, offset=self.received)
