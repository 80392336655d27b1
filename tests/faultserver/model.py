"""Records kept by the server and the served resource model."""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Dict, Optional

DEFAULT_LAST_MODIFIED = "Thu, 01 Jan 2026 00:00:00 GMT"
# Records of every server in this process, in the order they happened: on the virtual
# clock several share a time stamp, and this orders them.
_SEQUENCE = itertools.count()


@dataclass(frozen=True)
class Request:
    """One parsed request head, as the server saw it."""

    time: float
    conn: int
    method: str
    target: str
    version: str
    headers: Dict[str, str]
    raw_head: bytes
    range: Optional[str]
    if_range: Optional[str]
    seq: int = field(default_factory=lambda: next(_SEQUENCE), compare=False)

    @property
    def path(self) -> str:
        """The target without its query string: the resource lookup key."""
        return target_path(self.target)


@dataclass(frozen=True)
class Disconnect:
    """How one connection ended.

    kind: "complete", "rst", "fin", "client_closed", "stopped", "tls_error",
    "bad_request", "request_timeout" or "error" (a server bug; see detail).
    """

    time: float
    conn: int
    kind: str
    body_bytes_sent: int
    detail: str = ""
    seq: int = field(default_factory=lambda: next(_SEQUENCE), compare=False)


@dataclass(frozen=True)
class Resource:
    """One version of a served file; replaced wholesale, never mutated."""

    data: bytes
    etag: Optional[str]
    last_modified: Optional[str]
    chunked: bool = False
    content_type: str = "application/octet-stream"


def target_path(target: str) -> str:
    """Strip query and fragment so '/img?x=1' finds '/img'.

    An absolute-form target ("http://host/img", as sent to proxies) maps to
    its path too.
    """
    lowered = target[:8].lower()
    if lowered.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    for sep in ("?", "#"):
        target = target.split(sep, 1)[0]
    return target or "/"


def default_etag(data: bytes) -> str:
    """A strong ETag derived from the content, so new content = new ETag."""
    return '"%s"' % hashlib.sha1(data).hexdigest()


def later_date(previous: Optional[str]) -> str:
    """previous + 1 day, so a replaced file never keeps its old validator."""
    base = previous or DEFAULT_LAST_MODIFIED
    try:
        when = parsedate_to_datetime(base)
    except (TypeError, ValueError, IndexError):
        when = parsedate_to_datetime(DEFAULT_LAST_MODIFIED)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    when = when.astimezone(timezone.utc)
    return format_datetime(when + timedelta(days=1), usegmt=True)
