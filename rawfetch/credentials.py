"""Origin credentials (-u, URL userinfo, netrc, -H @FILE), and which values are secrets.

The rule for where a secret may go (its own origin only; a proxy only its own
Proxy-Authorization) lives here; how a secret is masked where it must never show lives
in redact.py, below everything. secrets_of() joins the two: it knows every form a
credential takes on the wire (the Basic token included), so each can be masked.

Precedence for the origin's Authorization (curl's): an explicit `Authorization` header,
then `user` (-u USER:PASS), then the URL's userinfo, then netrc (`netrc_file`, or with
`netrc` $NETRC or ~/.netrc). rawfetch never prompts: a USER without ":PASS" is refused.
"""
from __future__ import annotations

import binascii
import os
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from .errors import InvalidRequest
from .redact import MIN_SECRET_MASKED, SECRET_HEADERS, userinfo_of
# re-exported: cli.py and output.py still import these from here
from .url import URL

NETRC_MAX_BYTES = 1 << 20        # a netrc is a few lines; bounds work on a hostile file
HEADER_FILE_MAX_BYTES = 1 << 20  # -H @FILE: a handful of headers, never megabytes


def secrets_of(options: Any, urls: Sequence[str] = ()) -> Set[str]:
    """Every secret the caller gave, for redact_text: passwords (-u, --proxy-user, URL and
    proxy userinfo), credential header values, and the Basic tokens built from them."""
    found: Set[str] = set()
    pairs = [options.user, options.proxy_user]
    for text in list(urls) + [options.proxy or ""]:
        userinfo = userinfo_of(text)
        if userinfo is not None:
            pairs.append(percent_decoded(userinfo))
            found.add(userinfo)
    for pair in pairs:
        if pair:
            user, colon, password = pair.partition(":")
            found.update(p for p in (password, pair, basic(user, password)[6:]) if colon and p)
    for name, value in options.headers:
        if name.lower() in SECRET_HEADERS and value:
            found.add(value)
            found.update(part for part in value.split() if len(part) >= MIN_SECRET_MASKED)
    return found


# ---------------------------------------------------------------- origin credentials

def basic(user: str, password: str) -> str:
    """An RFC 7617 Basic credential (UTF-8, as curl and browsers send it)."""
    token = binascii.b2a_base64(("%s:%s" % (user, password)).encode("utf-8"), newline=False)
    return "Basic " + token.decode("ascii")


def split_user(text: str, what: str = "user") -> Tuple[str, str]:
    """USER:PASS -> (user, password). USER alone is refused: rawfetch never prompts."""
    if not isinstance(text, str):
        raise InvalidRequest("option %s must be a 'USER:PASSWORD' string" % what)
    user, colon, password = text.partition(":")
    if not colon:
        raise InvalidRequest("option %s needs USER:PASSWORD (rawfetch never prompts for "
                             "a password)" % what)
    return user, password


def percent_decoded(text: str) -> str:
    """A URL userinfo part as the user typed it (%40 -> @)."""
    if "%" not in text:
        return text
    from urllib.parse import unquote  # only for percent-encoded userinfo
    return unquote(text)


def origin_authorization(url: URL, options: Any) -> Optional[str]:
    """The Authorization value for `url` by precedence: user, URL userinfo, netrc."""
    if options.user is not None:
        return basic(*split_user(options.user))
    login: Optional[str] = None
    if url.userinfo is not None:
        user, colon, password = url.userinfo.partition(":")
        if colon:
            return basic(percent_decoded(user), percent_decoded(password))
        login = percent_decoded(user)
    entry = netrc_entry(url.host, options, login)
    if entry is not None and entry.login is not None:
        return basic(entry.login, entry.password or "")
    return None if login is None else basic(login, "")


def with_origin_auth(url: URL, headers: List[Tuple[str, str]], options: Any,
                     netrc_only: bool = False) -> List[Tuple[str, str]]:
    """headers plus the origin's Authorization, unless the caller set one explicitly.
    netrc_only: after a redirect to another origin, where -u and the first URL's
    userinfo must not follow (curl's rule) but netrc names the new host's own."""
    if any(name.lower() == "authorization" for name, _ in headers):
        return headers
    if netrc_only:
        entry = netrc_entry(url.host, options)
        value = None if entry is None or entry.login is None else basic(
            entry.login, entry.password or "")
    else:
        value = origin_authorization(url, options)
    return headers if value is None else headers + [("Authorization", value)]


# ---------------------------------------------------------------- netrc

class NetrcEntry(NamedTuple):
    machine: Optional[str]   # None for `default`
    login: Optional[str]
    password: Optional[str]


def netrc_path(options: Any) -> Optional[str]:
    """netrc_file, else with netrc=True $NETRC or ~/.netrc (curl's order)."""
    if options.netrc_file:
        return str(options.netrc_file)
    if not options.netrc:
        return None
    return os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")


def netrc_entry(host: str, options: Any, login: Optional[str] = None) -> Optional[NetrcEntry]:
    """The entry for host (and login, when the URL named one). A missing or unreadable
    file means no credentials, as in curl."""
    path = netrc_path(options)
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            text = handle.read(NETRC_MAX_BYTES).decode("utf-8", "replace")
    except OSError:  # not a failure: a missing or unreadable netrc means no credentials (curl)
        return None
    return lookup_netrc(parse_netrc(text), host, login)


def lookup_netrc(entries: List[NetrcEntry], host: str,
                 login: Optional[str] = None) -> Optional[NetrcEntry]:
    """First `machine` entry for host, else `default` (with a matching login if given)."""
    host = host.lower()
    fits = [e for e in entries if login is None or e.login == login]
    for entry in fits:
        if entry.machine is not None and entry.machine.lower() == host:
            return entry
    return next((e for e in fits if e.machine is None), None)


def parse_netrc(text: str) -> List[NetrcEntry]:
    """machine/default entries with login and password, in file order.

    Tokens are separated by whitespace; "double quoted" tokens may hold spaces and the
    escapes \\" \\\\ \\n \\r \\t; a token starting with # comments out the rest of its line;
    `macdef NAME` bodies (up to an empty line) and `account` values are skipped. A
    truncated file never raises: whatever was complete is used."""
    entries: List[NetrcEntry] = []
    tokens = _netrc_tokens(text)
    current: Optional[List[Optional[str]]] = None
    while tokens:
        word = tokens.pop(0)
        if word in ("machine", "default"):
            if current is not None:
                entries.append(NetrcEntry(*current))
            name = tokens.pop(0) if word == "machine" and tokens else None
            current = [name, None, None] if word == "default" or name else None
        elif word in ("login", "password", "account") and tokens:
            value = tokens.pop(0)
            if current is not None and word != "account":
                current[1 if word == "login" else 2] = value
    if current is not None:
        entries.append(NetrcEntry(*current))
    return entries


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def _netrc_tokens(text: str) -> List[str]:
    tokens: List[str] = []
    pos, end = 0, len(text)
    while pos < end:
        char = text[pos]
        if char.isspace():
            pos += 1
        elif char == "#":
            pos = _line_end(text, pos)
        elif char == '"':
            token, pos = _quoted(text, pos + 1)
            tokens.append(token)
        else:
            start = pos
            while pos < end and not text[pos].isspace():
                pos += 1
            tokens.append(text[start:pos])
            if tokens[-1] == "macdef":
                tokens.pop()
                pos = _macdef_end(text, pos)
    return tokens


def _line_end(text: str, pos: int) -> int:
    newline = text.find("\n", pos)
    return len(text) if newline < 0 else newline + 1


def _macdef_end(text: str, pos: int) -> int:
    blank = text.find("\n\n", pos)
    return len(text) if blank < 0 else blank + 2


def _quoted(text: str, pos: int) -> Tuple[str, int]:
    out: List[str] = []
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\" and pos + 1 < len(text):
            pos += 1
            char = _ESCAPES.get(text[pos], text[pos])
        out.append(char)
        pos += 1
    return "".join(out), pos


# ---------------------------------------------------------------- -H @FILE

def read_header_file(path: str) -> List[str]:
    """Headers from a file, one "Name: value" per line (blank and #-lines skipped), so a
    bearer token never appears in argv or `ps`."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(HEADER_FILE_MAX_BYTES + 1)
    except OSError as exc:  # the caller's input (-H @FILE), refused up front
        raise InvalidRequest("cannot read header file %s: %s" % (path, exc.strerror)) from None
    if len(data) > HEADER_FILE_MAX_BYTES:
        raise InvalidRequest("header file %s is larger than %d bytes"
                             % (path, HEADER_FILE_MAX_BYTES))
    try:
        text = data.decode("utf-8")
    except UnicodeError:
        raise InvalidRequest("header file %s is not UTF-8 text" % path) from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def expand_header_args(values: Iterable[str]) -> List[str]:
    """-H values with each @FILE replaced by the headers it holds."""
    out: List[str] = []
    for value in values:
        if value.startswith("@"):
            out.extend(read_header_file(value[1:]))
        else:
            out.append(value)
    return out
