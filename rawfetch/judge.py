"""The resume judgement as data: what a response means for a download holding N bytes.

No sockets and no state here (in the spirit of h11): `plan()` says what to ask for before an
attempt, `judge()` says what the answer means. resume.Stream carries the verdicts out. Every
rule of README "Resume rules" and of the mirror continuation rules is one branch below and
one row in tests/test_judge.py.
"""
from __future__ import annotations

from typing import Any, FrozenSet, NamedTuple, Optional, Tuple

OK_STATUSES = frozenset((200, 203))   # a full representation (RFC 9110 s15.3.1, s15.3.4)
DATE_RESOLUTION = 1.0   # s: an HTTP-date has one-second resolution, so a Last-Modified is a
                        # strong validator only when >= 1 s before its response's Date
                        # (RFC 9110 s8.8.2.2)

# Verdicts (Decision.action)
ADOPT = "adopt"          # nothing held: take this response from byte 0
CONTINUE = "continue"    # 206 that provably continues the held bytes
SKIP = "skip"            # 200 of the same object: discard the first `held` bytes, go on
RESTART = "restart"      # the object changed (or can't be proven the same): start from zero
CHANGED = "changed"      # same, but the held bytes were consumed (stream): give up
COMPLETE = "complete"    # 416 to bytes=N- with N == held == total: everything is here
RETRY = "retry"          # the answer is wrong (bad Content-Range...): reject it, try again
STATUS = "status"        # an HTTP error or an unexpected status: the status decides
ENCODED = "encoded"      # a Content-Encoding neither asked to decode nor the file's own

# Content-Encoding values (RFC 9110 s8.4.1, IANA registry; x- aliases s8.4.1.3) -> the file
# name suffixes that say the file itself is in that encoding, and the --decompress codec
# that decodes it (None: rawfetch has no decoder for it).
CODING_SUFFIXES = {
    "gzip": (".gz", ".tgz"), "x-gzip": (".gz", ".tgz"), "xz": (".xz", ".txz"),
    "x-xz": (".xz", ".txz"), "bzip2": (".bz2", ".tbz2"), "x-bzip2": (".bz2", ".tbz2"),
    "compress": (".z",), "x-compress": (".z",), "br": (".br",), "zstd": (".zst",),
}
CODING_DECODER = {"gzip": "gzip", "x-gzip": "gzip", "xz": "xz", "x-xz": "xz",
                  "bzip2": "bzip2", "x-bzip2": "bzip2"}


def _http_date(value: Optional[str]) -> Optional[float]:
    """An HTTP-date as a POSIX time, or None when absent or unparseable (RFC 9110 s5.6.7)."""
    if not value:
        return None
    from datetime import timezone
    from email.utils import parsedate_to_datetime   # only once a date is compared
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:    # asctime and zone-less forms: HTTP-dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _weak_form(etag: str) -> str:
    """The opaque-tag of an entity tag, for the weak comparison (RFC 9110 s8.8.3.2)."""
    return etag[2:] if etag.startswith("W/") else etag


class Identity(NamedTuple):
    """What makes a response 'the same object': its total length and its validators, as
    the response sent them (a weak ETag included), with the Date they were sent at."""
    total: Optional[int]
    etag: Optional[str]            # as sent: strong "x" or weak W/"x"
    last_modified: Optional[str]
    date: Optional[str] = None     # Date of the response that carried last_modified

    @property
    def same_second(self) -> bool:
        """Last-Modified less than 1 s before Date: the object may have changed again in
        the same second, unseen by any validator derived from the mtime (RFC 9110
        s8.8.2.2; Apache weakens its ETag then, nginx, caddy and lighttpd do not)."""
        modified, date = _http_date(self.last_modified), _http_date(self.date)
        return modified is not None and date is not None \
            and modified > date - DATE_RESOLUTION

    @property
    def strong_etag(self) -> Optional[str]:
        """The ETag when it is strong (RFC 9110 s8.8.3) and not sent in the second of a
        change (an mtime-based tag is no stronger than that mtime)."""
        etag = self.etag
        if etag is None or not etag.startswith('"') or self.same_second:
            return None
        return etag

    @property
    def strong_date(self) -> Optional[str]:
        """Last-Modified when it is a strong validator: >= 1 s before Date (s8.8.2.2)."""
        modified, date = _http_date(self.last_modified), _http_date(self.date)
        if modified is None or date is None or modified > date - DATE_RESOLUTION:
            return None
        return self.last_modified

    @property
    def validator(self) -> Optional[str]:
        """What If-Range may carry: a strong ETag, else a strong date -- but never a date
        when the object has an ETag, even a weak one (RFC 9110 s13.1.5)."""
        if self.etag is not None:
            return self.strong_etag
        return self.strong_date

    @classmethod
    def from_headers(cls, headers: Any, total: Optional[int]) -> "Identity":
        return cls(total, headers.get("etag"), headers.get("last-modified"),
                   headers.get("date"))

    def change_from(self, other: "Identity") -> Optional[str]:
        """Why `other` is visibly another version than self (None: nothing shows it). A
        weak ETag counts here: a changed weak tag is a changed object (s8.8.3.2)."""
        if self.total is not None and other.total is not None and self.total != other.total:
            return "its length changed from %s to %s bytes" % (
                format(self.total, ","), format(other.total, ","))
        if self.etag and other.etag and _weak_form(self.etag) != _weak_form(other.etag):
            return "its ETag changed from %s to %s" % (self.etag, other.etag)
        if self.last_modified and other.last_modified \
                and self.last_modified != other.last_modified:
            return "its Last-Modified changed from %s to %s" % (self.last_modified,
                                                                other.last_modified)
        return None

    def proves_same(self, other: "Identity") -> bool:
        """`other` is provably the version self was: equal total and an equal strong
        validator held (RFC 9110 s8.8.3.2 strong comparison)."""
        if self.total != other.total or self.change_from(other):
            return False
        if self.etag is not None:
            return self.strong_etag is not None and self.strong_etag == other.etag
        return self.strong_date is not None and self.total is not None \
            and other.last_modified == self.last_modified


class Held(NamedTuple):
    """The download's side of the question."""
    offset: int                    # bytes held (delivered, or on disk from an earlier run)
    identity: Optional[Identity]   # of the held bytes; None until a first response
    same_server: bool              # the URL asked is the one `identity` came from
    checksum: bool                 # the end result will be verified against a checksum
    can_restart: bool              # held bytes may be thrown away (file mode), not consumed
    codings: FrozenSet[str] = frozenset()   # Content-Encodings to take (accepted_codings)
    end: Optional[int] = None      # a closed range: one past the last byte wanted (None:
                                   # to the object's end); RFC 9110 s14.1.2 last-pos + 1


class Reply(NamedTuple):
    """The response's side: its status and the headers the rules read."""
    status: int
    content_range: Optional[str]
    content_length: Optional[int]
    headers: Any                   # case-insensitive mapping (etag, last-modified, date)

    @classmethod
    def of(cls, response: Any) -> "Reply":
        return cls(response.status, response.headers.get("content-range"),
                   response.content_length, response.headers)


class Decision(NamedTuple):
    action: str
    why: str = ""
    identity: Optional[Identity] = None   # the identity to adopt, when there is one


def accepted_codings(url_name: str, decompress: str) -> FrozenSet[str]:
    """The Content-Encodings a body may carry: the one the file's own name says it is in
    (`img.gz` served with gzip is the file itself), and those --decompress decodes."""
    name = url_name.lower()
    taken = {coding for coding, suffixes in CODING_SUFFIXES.items() if name.endswith(suffixes)}
    taken.update(coding for coding, codec in CODING_DECODER.items()
                 if decompress in ("auto", codec))
    return frozenset(taken)


def encoding_refusal(held: Held, reply: Reply) -> Optional[str]:
    """Why the body's Content-Encoding must not be saved (None: identity, or taken). It
    is never saved silently as if it were the file (RFC 9110 s8.4)."""
    value = reply.headers.get("content-encoding")
    codings = [c.strip().lower() for c in (value or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings or (len(codings) == 1 and codings[0] in held.codings):
        return None
    return ("the server sent the body with Content-Encoding: %s although rawfetch asked for "
            "identity; it is not the file's own encoding (the URL's name) and --decompress "
            "does not decode it" % value.strip())


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
    """Can a resume be shown to continue the same object? A checksum proves it; across
    mirrors only a strong ETag does; on one server a strong ETag or a strong date (a weak
    validator never: RFC 9110 s8.8.1, s13.1.5)."""
    if held.checksum:
        return True
    if held.identity is None:
        return False
    if not held.same_server:
        return bool(held.identity.strong_etag)
    return bool(held.identity.validator)


def if_range(held: Held) -> Optional[str]:
    """The If-Range value to send with `Range: bytes=N-`, if any: a strong validator only
    (RFC 9110 s13.1.5). Across mirrors a checksum is the proof (the mirror's own ETag may
    differ), else only a strong ETag."""
    if held.offset == 0 or held.identity is None:
        return None
    if held.same_server:
        return held.identity.validator
    return None if held.checksum else held.identity.strong_etag


def range_value(held: Held) -> str:
    """`bytes=N-`, or `bytes=N-M` for a closed range (RFC 9110 s14.1.2)."""
    return "bytes=%d-%s" % (held.offset, "" if held.end is None else held.end - 1)


def plan(held: Held) -> Tuple[Decision, Tuple[Tuple[str, str], ...]]:
    """Before an attempt: (ADOPT with the Range headers to send), or RESTART/CHANGED when
    the held bytes cannot be proven to belong to what this server will send."""
    if held.offset and not provable(held):
        where = "the server" if held.same_server else "this mirror"
        return _changed(held, "no strong validator (a weak or same-second ETag or "
                              "Last-Modified, RFC 9110 s8.8.1) and no checksum prove that %s "
                              "still holds the same object" % where), ()
    if held.offset == 0 or held.identity is None:
        return Decision(ADOPT), (() if held.end is None else (("Range", range_value(held)),))
    headers: Tuple[Tuple[str, str], ...] = (("Range", range_value(held)),)
    validator = if_range(held)
    if validator:
        headers += (("If-Range", validator),)
    return Decision(CONTINUE), headers


def judge(held: Held, reply: Reply) -> Decision:
    """What `reply` (to the request plan(held) described) means for the held bytes."""
    if reply.status in OK_STATUSES or reply.status == 206:
        refusal = encoding_refusal(held, reply)
        if refusal:
            return Decision(ENCODED, refusal)
    ranged = bool(held.offset) or held.end is not None     # a Range was sent
    if reply.status == 206 and ranged:
        return _partial(held, reply)
    if reply.status in OK_STATUSES:
        return _full(held, reply)
    if reply.status == 416 and ranged:
        return _unsatisfiable(held, reply)
    return Decision(STATUS, "unexpected HTTP %d" % reply.status)


def _exact(held: Held, reply: Reply) -> bool:
    """The 206 carries exactly the span asked for: `bytes N-(total-1)/total`, or for a
    closed range `bytes N-(end-1)/total` with total >= end (RFC 9110 s14.4, s15.3.7)."""
    span = parse_content_range(reply.content_range)
    if span is None or span[0] != held.offset or span[2] < 1:
        return False
    _, last, total = span
    wanted = total - 1 if held.end is None else held.end - 1
    return last == wanted and last < total and \
        reply.content_length in (None, last - held.offset + 1)


def _partial(held: Held, reply: Reply) -> Decision:
    span = parse_content_range(reply.content_range)
    if span is None or not _exact(held, reply):
        return Decision(RETRY, "malformed answer to Range %s: Content-Range %r, "
                        "Content-Length %r" % (range_value(held), reply.content_range,
                                               reply.content_length))
    old = held.identity or Identity(None, None, None)
    fresh = Identity.from_headers(reply.headers, span[2])
    if old.total is not None and span[2] != old.total:
        # A valid 206 for another length: the object changed (RFC 9110 s14.4: the
        # complete length is the selected representation's), whatever its validator says.
        return _changed(held, "the server's length changed from %s to %s bytes (206 with "
                              "Content-Range %r)" % (format(old.total, ","),
                                                     format(span[2], ","),
                                                     reply.content_range))
    sent = if_range(held)
    if sent is not None:   # the 206 must not name another version than the one asked for
        answered = fresh.etag if sent == old.etag else fresh.last_modified
        if answered is not None and answered != sent:
            return Decision(RETRY, "206 for a different validator than If-Range asked for")
    change = old.change_from(fresh) if held.same_server else None
    if change:   # no If-Range could be sent (a checksum is the proof): the 206 shows it
        return _changed(held, "206 of another version: " + change)
    if fresh.last_modified is None:   # keep what the 206 did not repeat
        fresh = fresh._replace(last_modified=old.last_modified, date=old.date)
    return Decision(CONTINUE, "", fresh._replace(etag=fresh.etag or old.etag))


def _full(held: Held, reply: Reply) -> Decision:
    fresh = Identity.from_headers(reply.headers, reply.content_length)
    if held.identity is None or held.offset == 0:
        return Decision(ADOPT, "", fresh)
    old = held.identity
    if not held.same_server:
        same = old.total == fresh.total and (held.checksum or (
            old.strong_etag is not None and old.strong_etag == fresh.etag))
        if not same:
            return _changed(held, "this mirror's object is not provably the same (length "
                                  "or strong ETag differ)", fresh)
        return _skip(held, fresh)
    change = old.change_from(fresh)
    if change:
        return _changed(held, "the server sent another version: " + change, fresh)
    if old.total is None and not (held.checksum or old.strong_etag):
        return _changed(held, "the held bytes' length was never known and no strong ETag "
                              "or checksum proves the full answer is the same object", fresh)
    if not (held.checksum or old.proves_same(fresh)):
        return _changed(held, "200 instead of 206 and no strong validator proves it is the "
                              "same object (RFC 9110 s8.8.1)", fresh)
    return _skip(held, fresh)


def _skip(held: Held, fresh: Identity) -> Decision:
    """A 200 of the proven-same object: discard the held prefix of its body -- or, when
    every byte is already held, read none of it (a server may ignore Range, RFC 9110
    s14.2: Python's http.server answers bytes=N- of a complete file with the whole 200)."""
    if fresh.total is not None and fresh.total == held.offset:
        return Decision(COMPLETE, "", fresh)
    return Decision(SKIP, "", fresh)


def _unsatisfiable(held: Held, reply: Reply) -> Decision:
    """416 to bytes=N-: complete when N is the total. Apache and lighttpd send no
    Content-Range; then a strong If-Range that the server evaluated (it answered 416, not
    200: RFC 9110 s13.2.2 step 5) and a known total equal to N prove it."""
    if held.end is not None:   # bytes before `end` should exist: the object is shorter now
        return _changed(held, "416 to the closed Range %s (Content-Range %r): the object "
                              "is shorter than before" % (range_value(held), reply.content_range))
    span = parse_content_range(reply.content_range)
    old = held.identity or Identity(None, None, None)
    known = old.total
    fresh = Identity.from_headers(reply.headers, held.offset)
    if span is not None and span[0] is None and span[2] == held.offset \
            and known in (None, held.offset):
        return Decision(COMPLETE, "", old._replace(total=held.offset))
    if reply.content_range is None and known == held.offset and if_range(held) \
            and not old.change_from(fresh):
        return Decision(COMPLETE, "416 without Content-Range after a strong If-Range",
                        old)
    return _changed(held, "416 with Content-Range %r while %s bytes are held"
                    % (reply.content_range, format(held.offset, ",")))


def _changed(held: Held, why: str, fresh: Optional[Identity] = None) -> Decision:
    return Decision(RESTART if held.can_restart else CHANGED, why, fresh)
