"""HTTP response planning: RFC 9110 range/If-Range rules and wire format.

Kept free of sockets so the semantics are easy to read and reason about;
the connection handler only decides *when* and *how much* to send.
"""
from __future__ import annotations

import http
import re
from dataclasses import dataclass
from email.utils import formatdate
from typing import List, Mapping, Optional, Tuple, Union

from .actions import Serve
from .model import Request, Resource

CHUNK_SIZE = 16 * 1024
UNSATISFIABLE = "unsatisfiable"
Headers = List[Tuple[str, str]]
Segment = Tuple[Union[bytes, memoryview], bool]  # (bytes, is_payload)
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*\Z", re.I | re.A)


@dataclass
class Plan:
    """What one response consists of, before any fault is applied."""

    status: int
    headers: Headers
    body: memoryview
    chunked: bool


def reason(code: int) -> str:
    """Standard reason phrase, or "Unknown" for codes http doesn't know."""
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def parse_range(value: Optional[str], total: int
                ) -> Union[None, str, Tuple[int, int]]:
    """Single byte range -> (start, end) inclusive, UNSATISFIABLE or None.

    None means "ignore the header" (absent, malformed or multi-range), which
    RFC 9110 allows a server to do by sending 200 with the full body.
    """
    m = _RANGE_RE.match(value or "")
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or total == 0:
            return UNSATISFIABLE
        return (max(0, total - suffix), total - 1)
    start = int(first)
    end = total - 1 if last == "" else int(last)
    if last != "" and end < start:
        return None
    if start >= total:
        return UNSATISFIABLE
    return (start, min(end, total - 1))


def if_range_matches(value: str, res: Resource) -> bool:
    """Strong ETag comparison or exact Last-Modified string equality."""
    value = value.strip()
    if value.startswith('"'):
        etag = res.etag
        return bool(etag) and not etag.startswith("W/") and etag == value
    if value.startswith("W/"):
        return False
    return bool(res.last_modified) and value == res.last_modified


def apply_headers(headers: Headers, extra: Optional[Mapping[str, Optional[str]]]
                  ) -> Headers:
    """Override/add headers case-insensitively; a None value removes one."""
    if not extra:
        return headers
    out = list(headers)
    for name, value in extra.items():
        out = [(n, v) for n, v in out if n.lower() != name.lower()]
        if value is not None:
            out.append((name, str(value)))
    return out


def head_bytes(status: int, headers: Headers) -> bytes:
    """Serialize a status line and header block."""
    lines = ["HTTP/1.1 %d %s" % (status, reason(status))]
    lines += ["%s: %s" % (n, v) for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def base_headers() -> Headers:
    """Headers every response from this server carries."""
    return [("Date", formatdate(usegmt=True)), ("Server", "faultserver"),
            ("Connection", "close")]


def not_found(req: Request) -> Plan:
    """404 for unknown paths, with a small body so clients read something."""
    body = b"not found: " + req.target.encode("latin-1", "replace") + b"\n"
    hdrs = base_headers() + [("Content-Type", "text/plain"),
                             ("Content-Length", str(len(body)))]
    return Plan(404, hdrs, memoryview(b"" if req.method == "HEAD" else body),
                False)


def choose_range(req: Request, res: Resource, act: Serve
                 ) -> Union[None, str, Tuple[int, int]]:
    """Apply Range + If-Range (+ the action's ignore_range) to one request."""
    if act.ignore_range:
        return None
    rng = parse_range(req.range, len(res.data))
    if rng is not None and req.if_range is not None:
        if not if_range_matches(req.if_range, res):
            return None
    return rng


def plan_serve(req: Request, res: Resource, act: Serve) -> Plan:
    """Plan 200/206/416 for a resource according to the action."""
    total = len(res.data)
    chunked = res.chunked if act.chunked is None else act.chunked
    hdrs = base_headers() + [("Content-Type", res.content_type),
                             ("Accept-Ranges", "bytes")]
    if res.etag:
        hdrs.append(("ETag", res.etag))
    if res.last_modified:
        hdrs.append(("Last-Modified", res.last_modified))
    rng = choose_range(req, res, act)
    view = memoryview(res.data)
    if rng == UNSATISFIABLE:
        status, chunked = 416, False
        view = view[:0]
        hdrs.append(("Content-Range", "bytes */%d" % total))
    elif isinstance(rng, tuple):
        status = 206
        start, end = rng
        view = view[start:end + 1]
        hdrs.append(("Content-Range", content_range(act, start, end, total)))
    else:
        status = 200
    if chunked:
        hdrs.append(("Transfer-Encoding", "chunked"))
    else:
        hdrs.append(("Content-Length", str(len(view))))
    if req.method == "HEAD":
        view = view[:0]
    return Plan(status, apply_headers(hdrs, act.headers), view, chunked)


def content_range(act: Serve, start: int, end: int, total: int) -> str:
    """The (possibly deliberately wrong) Content-Range value for a 206."""
    if act.wrong_range:
        if act.content_range is not None:
            return act.content_range
        start += 1
    return "bytes %d-%d/%d" % (start, end, total)


def plan_status(req: Request, code: int,
                headers: Optional[Mapping[str, Optional[str]]],
                body: bytes) -> Plan:
    """A fixed status response (errors, redirects, Retry-After...)."""
    hdrs = base_headers() + [("Content-Length", str(len(body)))]
    hdrs = apply_headers(hdrs, headers)
    view = memoryview(b"" if req.method == "HEAD" else body)
    return Plan(code, hdrs, view, False)


def segments(body: memoryview, chunked: bool) -> List[Segment]:
    """Split a body into wire segments, marking which bytes are payload."""
    if not chunked:
        return [(body, True)] if len(body) else []
    out: List[Segment] = []
    for off in range(0, len(body), CHUNK_SIZE):
        piece = body[off:off + CHUNK_SIZE]
        out.append((b"%x\r\n" % len(piece), False))
        out.append((piece, True))
        out.append((b"\r\n", False))
    out.append((b"0\r\n\r\n", False))
    return out
