"""The resume judgement as a table, no sockets: every rule of README "Resume rules" and of
the mirror continuation rules, one row each."""
from __future__ import annotations

import pytest

from rawfetch.http11 import Headers
from rawfetch.judge import (ADOPT, CHANGED, COMPLETE, CONTINUE, ENCODED, RESTART, RETRY, SKIP,
                            STATUS, Held, Identity, Reply, accepted_codings, judge,
                            parse_content_range, plan)

T = 1000                                   # total length of the object
HELD = 400                                 # bytes held
LM = "Thu, 01 Jan 2026 00:00:00 GMT"       # Last-Modified
LATER = "Fri, 02 Jan 2026 00:00:00 GMT"    # a Date a day later: LM is a strong validator
SAME_SECOND = LM                           # a Date equal to LM: LM is weak (s8.8.2.2)
ETAG = Identity(T, '"v1"', LM, LATER)
LASTMOD = Identity(T, None, LM, LATER)
BARE = Identity(T, None, None)             # no validator at all
CLOSE_DELIMITED = Identity(None, None, LM, LATER)
WEAK_ETAG = Identity(T, 'W/"v1"', LM, LATER)
SAME_SECOND_ETAG = Identity(T, '"v1"', LM, SAME_SECOND)   # nginx/caddy: mtime-based tag
SAME_SECOND_LASTMOD = Identity(T, None, LM, SAME_SECOND)
NO_DATE_LASTMOD = Identity(T, None, LM)    # old sidecars, servers without a clock
DATE_BEHIND = Identity(T, None, LM, "Wed, 31 Dec 2025 23:59:58 GMT")   # lighttpd once


def held(identity=ETAG, offset=HELD, same_server=True, checksum=False, file_mode=True,
         codings=frozenset()):
    return Held(offset, identity, same_server, checksum, file_mode, codings)


def reply(status, content_range=None, length=None, etag='"v1"', last_modified=LM,
          date=LATER, encoding=None):
    fields = []
    if date is not None:
        fields.append(("Date", date))
    if etag is not None:
        fields.append(("ETag", etag))
    if last_modified is not None:
        fields.append(("Last-Modified", last_modified))
    if encoding is not None:
        fields.append(("Content-Encoding", encoding))
    return Reply(status, content_range, length, Headers(fields))


PARTIAL = "bytes %d-%d/%d" % (HELD, T - 1, T)

# (name, held, reply, expected action, expected identity total or None)
JUDGE_ROWS = [
    # 206: exactly `bytes N-(T-1)/T`, matching length and validator, or rejected
    ("206 exact", held(), reply(206, PARTIAL, T - HELD), CONTINUE, T),
    ("206 no Content-Length", held(), reply(206, PARTIAL, None), CONTINUE, T),
    ("206 start shifted", held(), reply(206, "bytes 401-999/1000", T - 401), RETRY, None),
    ("206 start before held", held(), reply(206, "bytes 0-999/1000", T), RETRY, None),
    ("206 end short of total", held(), reply(206, "bytes 400-998/1000", 599), RETRY, None),
    # a well-formed 206 for another total length is a change (issue 23 item 3), not a
    # malformed reply: restart from zero (file, device) or ResourceChanged (stream)
    ("206 other total", held(), reply(206, "bytes 400-1099/1100", 700), RESTART, None),
    ("206 other total, stream", held(file_mode=False), reply(206, "bytes 400-1099/1100", 700),
     CHANGED, None),
    ("206 shorter total, same ETag", held(), reply(206, "bytes 400-899/900", 500), RESTART,
     None),
    ("206 other total, checksum given", held(checksum=True),
     reply(206, "bytes 400-1099/1100", 700), RESTART, None),
    ("206 other total from the sidecar, same ETag (issue 20 item 5)", held(offset=T - 1),
     reply(206, "bytes 999-1099/1100", 101), RESTART, None),
    ("206 other total, malformed span", held(), reply(206, "bytes 400-1098/1100", 699),
     RETRY, None),
    ("206 length disagrees", held(), reply(206, PARTIAL, T - HELD + 1), RETRY, None),
    ("206 without Content-Range", held(), reply(206, None, T - HELD), RETRY, None),
    ("206 unsatisfied form", held(), reply(206, "bytes */1000", None), RETRY, None),
    ("206 other unit", held(), reply(206, "items 400-999/1000", T - HELD), RETRY, None),
    ("206 other ETag than If-Range", held(), reply(206, PARTIAL, T - HELD, etag='"v2"'),
     RETRY, None),
    ("206 without validator keeps ours", held(), reply(206, PARTIAL, T - HELD, etag=None,
                                                       last_modified=None), CONTINUE, T),
    ("206 when nothing is held", held(offset=0), reply(206, "bytes 0-999/1000", T), STATUS,
     None),
    ("206 total unknown before (close-delimited first)", held(CLOSE_DELIMITED),
     reply(206, PARTIAL, T - HELD, etag=None), CONTINUE, T),
    # 200: same object -> skip the prefix; changed -> restart (file) or fail (stream)
    ("200 first response", held(None, offset=0), reply(200, None, T), ADOPT, T),
    ("200 same ETag and length", held(), reply(200, None, T), SKIP, T),
    ("203 same ETag and length", held(), reply(203, None, T), SKIP, T),
    ("200 same ETag and length, every byte held: body unread", held(offset=T),
     reply(200, None, T), COMPLETE, T),
    ("mirror 200 same ETag and length, every byte held", held(offset=T, same_server=False),
     reply(200, None, T), COMPLETE, T),
    ("200 other ETag, every byte held", held(offset=T), reply(200, None, T, etag='"v2"'),
     RESTART, T),
    ("200 other ETag", held(), reply(200, None, T, etag='"v2"'), RESTART, T),
    ("200 other ETag, stream", held(file_mode=False), reply(200, None, T, etag='"v2"'),
     CHANGED, T),
    ("200 same ETag, other length", held(), reply(200, None, T + 1), RESTART, T + 1),
    ("200 weak ETag is no proof", held(), reply(200, None, T, etag='W/"v1"'), RESTART, T),
    ("200 same Last-Modified, no ETag", held(LASTMOD), reply(200, None, T, etag=None), SKIP, T),
    ("200 other Last-Modified", held(LASTMOD),
     reply(200, None, T, etag=None, last_modified=LATER), RESTART, T),
    ("200 close-delimited without ETag can't be proven", held(CLOSE_DELIMITED),
     reply(200, None, None, etag=None), RESTART, None),
    # 416: `bytes */N` with N == held means complete
    ("416 */held", held(offset=T), reply(416, "bytes */1000"), COMPLETE, T),
    ("416 */held, total unknown", held(CLOSE_DELIMITED, offset=T), reply(416, "bytes */1000"),
     COMPLETE, T),
    ("416 */other", held(offset=T), reply(416, "bytes */999"), RESTART, None),
    ("416 */other, stream", held(offset=T, file_mode=False), reply(416, "bytes */999"),
     CHANGED, None),
    # 416 without Content-Range (Apache, lighttpd): complete when a strong If-Range was
    # evaluated (RFC 9110 s13.2.2 step 5) and the recorded total is the bytes held
    ("416 without Content-Range, strong ETag", held(offset=T), reply(416), COMPLETE, T),
    ("416 without Content-Range, strong date", held(LASTMOD, offset=T),
     reply(416, etag=None), COMPLETE, T),
    ("416 without Content-Range, other ETag on the 416", held(offset=T),
     reply(416, etag='"v2"'), RESTART, None),
    ("416 without Content-Range, held less than the total", held(offset=T - 1), reply(416),
     RESTART, None),
    ("416 without Content-Range, total never known", held(CLOSE_DELIMITED, offset=T),
     reply(416, etag=None), RESTART, None),
    ("416 without Content-Range, no If-Range sent (checksum)",
     held(BARE, offset=T, checksum=True), reply(416, etag=None, last_modified=None),
     RESTART, None),
    ("416 when nothing is held", held(offset=0), reply(416, "bytes */1000"), STATUS, None),
    # anything else: the status decides (404 final, 503 retried: see errors.py)
    ("404", held(), reply(404), STATUS, None),
    ("503", held(), reply(503), STATUS, None),
    ("304", held(), reply(304), STATUS, None),
    # another mirror: a strong ETag or a checksum proves the same object
    ("mirror 206 same ETag", held(same_server=False), reply(206, PARTIAL, T - HELD), CONTINUE,
     T),
    ("mirror 200 same ETag and length", held(same_server=False), reply(200, None, T), SKIP, T),
    ("mirror 200 other ETag", held(same_server=False), reply(200, None, T, etag='"m2"'),
     RESTART, T),
    ("mirror 200 other ETag, checksum given", held(same_server=False, checksum=True),
     reply(200, None, T, etag='"m2"'), SKIP, T),
    ("mirror 200 other length, checksum given", held(same_server=False, checksum=True),
     reply(200, None, T + 5, etag='"m2"'), RESTART, T + 5),
    ("mirror 200 same Last-Modified only", held(LASTMOD, same_server=False),
     reply(200, None, T, etag=None), RESTART, T),
    # RFC 9110 s8.8.2.2: Last-Modified is strong only >= 1 s before its response's Date;
    # s8.8.3.2/s13.1.5: a weak ETag is compared (changed = changed), never proof
    ("200 changed weak ETag is a change", held(WEAK_ETAG),
     reply(200, None, T, etag='W/"v2"'), RESTART, T),
    ("200 changed weak ETag, stream", held(WEAK_ETAG, file_mode=False),
     reply(200, None, T, etag='W/"v2"'), CHANGED, T),
    ("200 same weak ETag is no proof", held(WEAK_ETAG),
     reply(200, None, T, etag='W/"v1"'), RESTART, T),
    ("200 same weak ETag, checksum given", held(WEAK_ETAG, checksum=True),
     reply(200, None, T, etag='W/"v1"'), SKIP, T),
    ("200 changed weak ETag, checksum given", held(WEAK_ETAG, checksum=True),
     reply(200, None, T, etag='W/"v2"'), RESTART, T),
    ("200 weak then strong form of one tag is not a change, nor proof", held(WEAK_ETAG),
     reply(200, None, T, etag='"v1"'), RESTART, T),
    ("200 same-second Last-Modified is no proof (Apache same-second case)",
     held(SAME_SECOND_LASTMOD), reply(200, None, T, etag=None), RESTART, T),
    ("200 same-second ETag is no proof (nginx/caddy mtime tags)", held(SAME_SECOND_ETAG),
     reply(200, None, T), RESTART, T),
    ("200 Last-Modified without a Date is no proof", held(NO_DATE_LASTMOD),
     reply(200, None, T, etag=None), RESTART, T),
    ("200 Date behind Last-Modified is no proof (lighttpd)", held(DATE_BEHIND),
     reply(200, None, T, etag=None), RESTART, T),
    ("200 changed Last-Modified beside the same ETag", held(),
     reply(200, None, T, last_modified=LATER), RESTART, T),
    ("206 changed weak ETag, checksum (no If-Range sent)", held(WEAK_ETAG, checksum=True),
     reply(206, PARTIAL, T - HELD, etag='W/"v2"'), RESTART, None),
    ("206 same weak ETag, checksum (no If-Range sent)", held(WEAK_ETAG, checksum=True),
     reply(206, PARTIAL, T - HELD, etag='W/"v1"'), CONTINUE, T),
    ("206 changed Last-Modified, checksum, no ETag", held(SAME_SECOND_LASTMOD, checksum=True),
     reply(206, PARTIAL, T - HELD, etag=None, last_modified=LATER), RESTART, None),
    # Content-Encoding (RFC 9110 s8.4): the file's own (URL name) or decoded, else refused
    ("200 gzip-encoded, not asked for", held(None, offset=0),
     reply(200, None, T, encoding="gzip"), ENCODED, None),
    ("200 gzip-encoded, the file is .gz", held(None, offset=0, codings=frozenset(["gzip"])),
     reply(200, None, T, encoding="gzip"), ADOPT, T),
    ("206 gzip-encoded, not asked for", held(), reply(206, PARTIAL, T - HELD,
                                                      encoding="gzip"), ENCODED, None),
    ("200 identity encoding is the file", held(None, offset=0),
     reply(200, None, T, encoding="identity"), ADOPT, T),
    ("200 two codings, one taken", held(None, offset=0, codings=frozenset(["gzip"])),
     reply(200, None, T, encoding="gzip, br"), ENCODED, None),
    ("404 gzip-encoded: the status decides", held(), reply(404, encoding="gzip"), STATUS,
     None),
]


@pytest.mark.parametrize("name,state,answer,action,total", JUDGE_ROWS,
                         ids=[row[0] for row in JUDGE_ROWS])
def test_judge(name, state, answer, action, total):
    decision = judge(state, answer)
    assert decision.action == action, decision.why
    if total is not None:
        assert decision.identity is not None and decision.identity.total == total
    if action in (RESTART, CHANGED, RETRY, ENCODED):
        assert decision.why


def test_hints_name_what_happened():
    changed = judge(held(), reply(206, "bytes 400-1099/1100", 700))
    assert "length changed from 1,000 to 1,100" in changed.why
    malformed = judge(held(), reply(206, "bytes 401-999/1000", T - 401))
    assert malformed.why.startswith("malformed answer to Range bytes=400-")


def test_judge_206_adopts_the_fresh_validator_or_keeps_the_held_one():
    kept = judge(held(LASTMOD), reply(206, PARTIAL, T - HELD, etag=None, last_modified=None))
    assert kept.identity == LASTMOD
    fresh = judge(held(LASTMOD), reply(206, PARTIAL, T - HELD))
    assert fresh.identity == Identity(T, '"v1"', LM, LATER)


# (name, held, expected action, expected request headers)
PLAN_ROWS = [
    ("nothing held", held(None, offset=0), ADOPT, ()),
    ("strong ETag -> If-Range ETag", held(), CONTINUE,
     (("Range", "bytes=400-"), ("If-Range", '"v1"'))),
    ("Last-Modified only -> If-Range date", held(LASTMOD), CONTINUE,
     (("Range", "bytes=400-"), ("If-Range", LM))),
    ("no validator, file mode -> restart", held(BARE), RESTART, ()),
    ("no validator, checksum -> Range without If-Range", held(BARE, checksum=True), CONTINUE,
     (("Range", "bytes=400-"),)),
    ("no validator, stream -> changed", held(BARE, file_mode=False), CHANGED, ()),
    ("no validator, stream, checksum -> Range without If-Range",
     held(BARE, file_mode=False, checksum=True), CONTINUE, (("Range", "bytes=400-"),)),
    # RFC 9110 s13.1.5: If-Range carries a strong validator only, a date never beside an
    # ETag; without one the resume is unprovable (s8.8.1) -> restart / changed
    ("weak ETag -> restart", held(WEAK_ETAG), RESTART, ()),
    ("weak ETag, stream -> changed", held(WEAK_ETAG, file_mode=False), CHANGED, ()),
    ("weak ETag, checksum -> Range, no date If-Range beside it",
     held(WEAK_ETAG, checksum=True), CONTINUE, (("Range", "bytes=400-"),)),
    ("same-second Last-Modified -> restart (s8.8.2.2)", held(SAME_SECOND_LASTMOD), RESTART,
     ()),
    ("same-second ETag -> restart (mtime-based tags)", held(SAME_SECOND_ETAG), RESTART, ()),
    ("same-second ETag, stream -> changed", held(SAME_SECOND_ETAG, file_mode=False),
     CHANGED, ()),
    ("Last-Modified without Date (old sidecar) -> restart", held(NO_DATE_LASTMOD), RESTART,
     ()),
    ("Date behind Last-Modified -> restart", held(DATE_BEHIND), RESTART, ()),
    ("Last-Modified 1 s before Date -> If-Range date",
     held(Identity(T, None, LM, "Thu, 01 Jan 2026 00:00:01 GMT")), CONTINUE,
     (("Range", "bytes=400-"), ("If-Range", LM))),
    ("ETag without any date -> If-Range ETag", held(Identity(T, '"v1"', None)), CONTINUE,
     (("Range", "bytes=400-"), ("If-Range", '"v1"'))),
    ("mirror, strong ETag -> If-Range ETag", held(same_server=False), CONTINUE,
     (("Range", "bytes=400-"), ("If-Range", '"v1"'))),
    ("mirror, checksum -> Range without If-Range", held(same_server=False, checksum=True),
     CONTINUE, (("Range", "bytes=400-"),)),
    ("mirror, Last-Modified only -> restart", held(LASTMOD, same_server=False), RESTART, ()),
    ("mirror, weak ETag -> restart", held(WEAK_ETAG, same_server=False), RESTART, ()),
    ("mirror, Last-Modified only, stream -> changed",
     held(LASTMOD, same_server=False, file_mode=False), CHANGED, ()),
    ("earlier run's bytes, identity from the sidecar", held(ETAG, offset=T - 1), CONTINUE,
     (("Range", "bytes=999-"), ("If-Range", '"v1"'))),
]


@pytest.mark.parametrize("name,state,action,headers", PLAN_ROWS,
                         ids=[row[0] for row in PLAN_ROWS])
def test_plan(name, state, action, headers):
    decision, sent = plan(state)
    assert (decision.action, sent) == (action, headers)


@pytest.mark.parametrize("value,parsed", [
    ("bytes 0-9/10", (0, 9, 10)),
    ("bytes */10", (None, None, 10)),
    ("BYTES 1-2/3", (1, 2, 3)),
    ("bytes 1-2/*", None),
    ("bytes -1-2/3", None),
    ("bytes 1-/3", None),
    ("bytes 0x1-2/3", None),
    ("bytes 1-2/" + "9" * 20, None),
    ("", None),
    (None, None),
])
def test_parse_content_range(value, parsed):
    assert parse_content_range(value) == parsed


@pytest.mark.parametrize("name,decompress,codings", [
    ("img.gz", "none", {"gzip", "x-gzip"}),
    ("IMG.TGZ", "none", {"gzip", "x-gzip"}),
    ("img.xz", "none", {"xz", "x-xz"}),
    ("img.raw", "none", set()),
    ("img.raw", "gzip", {"gzip", "x-gzip"}),
    ("img.raw", "auto", {"gzip", "x-gzip", "xz", "x-xz", "bzip2", "x-bzip2"}),
    ("img.zst", "auto", {"zstd", "gzip", "x-gzip", "xz", "x-xz", "bzip2", "x-bzip2"}),
    ("", "none", set()),
])
def test_accepted_codings(name, decompress, codings):
    assert accepted_codings(name, decompress) == frozenset(codings)


@pytest.mark.parametrize("modified,date,strong", [
    (LM, LATER, True),
    (LM, "Thu, 01 Jan 2026 00:00:01 GMT", True),     # exactly 1 s before: strong
    (LM, LM, False),                                 # same second (s8.8.2.2)
    (LM, "Wed, 31 Dec 2025 23:59:58 GMT", False),    # Date behind Last-Modified
    (LM, None, False),                               # no Date: cannot be deduced
    (LM, "garbage", False),
    ("garbage", LATER, False),
    ("Thursday, 01-Jan-26 00:00:00 GMT", LATER, True),   # RFC 850 form (s5.6.7)
    ("Thu Jan  1 00:00:00 2026", "Thu, 01 Jan 2026 00:00:00 GMT", False),  # asctime, GMT
    ("Thu Jan  1 00:00:00 2026", "Thu, 01 Jan 2026 00:00:01 GMT", True),
])
def test_strong_date(modified, date, strong):
    identity = Identity(T, None, modified, date)
    assert (identity.strong_date == modified) is strong
    assert (identity.validator is not None) is strong
