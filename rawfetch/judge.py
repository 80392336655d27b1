"""The resume judgement as data: what a response means for a download holding N bytes.

No sockets and no state here (in the spirit of h11): `plan()` says what to ask for before an
attempt, `judge()` says what the answer means. resume.Stream carries the verdicts out. Every
rule of README "Resume rules" and of the mirror continuation rules is one branch below and
one row in tests/test_judge.py.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

OK_STATUSES = frozenset((200, 203))   # a full representation (RFC 9110 s15.3.1, s15.3.4)

# Verdicts (Decision.action)
ADOPT = "adopt"          # nothing held: take this response from byte 0
CONTINUE = "continue"    # 206 that provably continues the held bytes
SKIP = "skip"            # 200 of the same object: discard the first `held` bytes, go on
RESTART = "restart"      # the object changed (or can't be proven the same): start from zero
CHANGED = "changed"      # same, but the held bytes were consumed (stream): give up
COMPLETE = "complete"    # 416 `bytes */N` with N == held: everything is already here
RETRY = "retry"          # the answer is wrong (bad Content-Range...): reject it, try again
STATUS = "status"        # an HTTP error or an unexpected status: the status decides


class Identity(NamedTuple):
    """What makes a response 'the same object': total length and validator."""
    total: Optional[int]
    etag: Optional[str]            # strong ETags only
    last_modified: Optional[str]

    @property
    def validator(self) -> Optional[str]:
        return self.etag or self.last_modified

    @classmethod
    def from_headers(cls, headers: Any, total: Optional[int]) -> "Identity":
        etag = headers.get("etag")
        if etag is not None and (etag.startswith("W/") or not etag.startswith('"')):
            etag = None  # weak validators cannot prove byte equality (RFC 9110 s8.8.3)
        return cls(total, etag, headers.get("last-modified"))

    def same_as(self, other: "Identity") -> bool:
        return self.total == other.total and self.same_validator(other)

    def same_validator(self, other: "Identity") -> bool:
        if self.etag or other.etag:
            return self.etag == other.etag
        return self.last_modified == other.last_modified


class Held(NamedTuple):
    """The download's side of the question."""
    offset: int                    # bytes held (delivered, or on disk from an earlier run)
    identity: Optional[Identity]   # of the held bytes; None until a first response
    same_server: bool              # the URL asked is the one `identity` came from
    checksum: bool                 # the end result will be verified against a checksum
    can_restart: bool              # held bytes may be thrown away (file mode), not consumed


class Reply(NamedTuple):
    """The response's side: its status and the headers the rules read."""
    status: int
    content_range: Optional[str]
    content_length: Optional[int]
    headers: Any                   # case-insensitive mapping (etag, last-modified)

    @classmethod
    def of(cls, response: Any) -> "Reply":
        return cls(response.status, response.headers.get("content-range"),
                   response.content_length, response.headers)


class Decision(NamedTuple):
    action: str
    why: str = ""
    identity: Optional[Identity] = None   # the identity to adopt, when there is one


def parse_content_range(value: Optional[str]) -> Optional[Tuple[Optional[int], Optional[int], int]]:
    """`bytes A-B/N` -> (A, B, N); `bytes */N` -> (None, None, N); anything else -> None."""
    if not value:
        return None
    unit, _, spec = value.strip().partition(" ")
    span, slash, total = spec.strip().partition("/")
    if unit.lower() != "bytes" or not slash or not _digits(total):
        return None
    if span == "*":
        return None, None, int(total)
    first, dash, last = span.partition("-")
    if not dash or not _digits(first) or not _digits(last):
        return None
    return int(first), int(last), int(total)


def _digits(text: str) -> bool:
    return 0 < len(text) <= 19 and not text.strip("0123456789")


def provable(held: Held) -> bool:
    """Can a resume be shown to continue the same object? Across mirrors only a strong
    ETag or a checksum proves it; on one server Last-Modified does too."""
    if held.checksum:
        return True
    if held.identity is None:
        return False
    if not held.same_server:
        return bool(held.identity.etag)
    return bool(held.identity.validator)


def if_range(held: Held) -> Optional[str]:
    """The If-Range value to send with `Range: bytes=N-`, if any. Across mirrors a
    checksum is the proof (the mirror's own ETag may differ), else only a strong ETag."""
    if held.offset == 0 or held.identity is None:
        return None
    if held.same_server:
        return held.identity.validator
    return None if held.checksum else held.identity.etag


def plan(held: Held) -> Tuple[Decision, Tuple[Tuple[str, str], ...]]:
    """Before an attempt: (ADOPT with the Range headers to send), or RESTART/CHANGED when
    the held bytes cannot be proven to belong to what this server will send."""
    if held.offset and (held.can_restart or not held.same_server) and not provable(held):
        where = "the server" if held.same_server else "this mirror"
        return _changed(held, "no strong validator and no checksum prove that %s holds the "
                              "same object" % where), ()
    if held.offset == 0 or held.identity is None:
        return Decision(ADOPT), ()
    headers: Tuple[Tuple[str, str], ...] = (("Range", "bytes=%d-" % held.offset),)
    validator = if_range(held)
    if validator:
        headers += (("If-Range", validator),)
    return Decision(CONTINUE), headers


def judge(held: Held, reply: Reply) -> Decision:
    """What `reply` (to the request plan(held) described) means for the held bytes."""
    if reply.status == 206 and held.offset:
        return _partial(held, reply)
    if reply.status in OK_STATUSES:
        return _full(held, reply)
    if reply.status == 416 and held.offset:
        return _unsatisfiable(held, reply)
    return Decision(STATUS, "unexpected HTTP %d" % reply.status)


def _partial(held: Held, reply: Reply) -> Decision:
    span = parse_content_range(reply.content_range)
    if span is None or span[0] != held.offset or span[2] < 1 or span[1] != span[2] - 1 \
            or reply.content_length not in (None, span[2] - held.offset):
        return Decision(RETRY, "malformed answer to Range bytes=%d-: Content-Range %r, "
                        "Content-Length %r" % (held.offset, reply.content_range,
                                               reply.content_length))
    known = held.identity.total if held.identity else None
    if known is not None and span[2] != known:
        # A valid 206 for another length: the object changed (RFC 9110 s14.4: the
        # complete length is the selected representation's), whatever its validator says.
        return _changed(held, "the server's length changed from %s to %s bytes (206 with "
                              "Content-Range %r)" % (format(known, ","), format(span[2], ","),
                                                     reply.content_range))
    fresh = Identity.from_headers(reply.headers, span[2])
    old = held.identity or Identity(None, None, None)
    sent = if_range(held)
    if sent is not None:   # the 206 must not name another version than the one asked for
        answered = fresh.etag if sent == old.etag else fresh.last_modified
        if answered is not None and answered != sent:
            return Decision(RETRY, "206 for a different validator than If-Range asked for")
    if not fresh.validator:
        fresh = Identity(span[2], old.etag, old.last_modified)
    return Decision(CONTINUE, "", fresh)


def _full(held: Held, reply: Reply) -> Decision:
    fresh = Identity.from_headers(reply.headers, reply.content_length)
    if held.identity is None or held.offset == 0:
        return Decision(ADOPT, "", fresh)
    old = held.identity
    if held.same_server:
        same = old.same_as(fresh)
    else:
        same = old.total == fresh.total and (held.checksum or (
            bool(old.etag) and old.etag == fresh.etag))
    if not same or (old.total is None and not old.etag):
        return _changed(held, "the server sent a different version (validator or length "
                              "changed)", fresh)
    return Decision(SKIP, "", fresh)


def _unsatisfiable(held: Held, reply: Reply) -> Decision:
    span = parse_content_range(reply.content_range)
    known = held.identity.total if held.identity else None
    if span is not None and span[0] is None and span[2] == held.offset \
            and known in (None, held.offset):
        old = held.identity or Identity(None, None, None)
        return Decision(COMPLETE, "", Identity(held.offset, old.etag, old.last_modified))
    return _changed(held, "416 with Content-Range %r while %d bytes are held"
                    % (reply.content_range, held.offset))


def _changed(held: Held, why: str, fresh: Optional[Identity] = None) -> Decision:
    return Decision(RESTART if held.can_restart else CHANGED, why, fresh)
