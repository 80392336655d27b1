"""Origin credentials (-u, URL userinfo, netrc, -H @FILE) and the redaction of secrets.

Why together: the rule for where a secret may go (its own origin only; a proxy only its
own Proxy-Authorization) and the rule for where it must never show (stderr, events,
--log-json, logging, the .part.json sidecar, a usage error echoing argv) are about the
same values, and stay in step when they live side by side.

Precedence for the origin's Authorization (curl's): an explicit `Authorization` header,
then `user` (-u USER:PASS), then the URL's userinfo, then netrc (`netrc_file`, or with
`netrc` $NETRC or ~/.netrc). rawfetch never prompts: a USER without ":PASS" is refused.
"""
from __future__ import annotations

import binascii
import os
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from .errors import InvalidRequest
from .http11 import SECRET_HEADERS
from .url import URL

MASK = "***"
NETRC_MAX_BYTES = 1 << 20        # a netrc is a few lines; bounds work on a hostile file
HEADER_FILE_MAX_BYTES = 1 << 20  # -H @FILE: a handful of headers, never megabytes
MIN_SECRET_MASKED = 4            # shorter secrets are only masked where their place is
                                 # known (URL userinfo, header values): "pw" inside free
                                 # text would garble unrelated words
_URL_END = frozenset("/?#\"'<>()[]{} \t\r\n,;|")  # where an authority ends inside free text
_SECRET_FLAGS = ("-u", "--user", "--proxy-user", "-U")


# ---------------------------------------------------------------- redaction

def redact_url(text: str) -> str:
    """Mask the userinfo of every URL inside `text`: scheme://user:***@host/...

    A userinfo without a colon is masked whole (it is often a token, e.g. a PAT)."""
    if "@" not in text or "://" not in text:
        return text
    out: List[str] = []
    pos = 0
    while True:
        found = text.find("://", pos)
        if found < 0:
            break
        start = found + 3
        end = start
        while end < len(text) and text[end] not in _URL_END:
            end += 1
        userinfo, at, _host = text[start:end].rpartition("@")
        out.append(text[pos:start])
        if at:
            user, colon, _password = userinfo.partition(":")
            out.append((user + ":" + MASK if colon else MASK) + "@")
            start += len(userinfo) + 1
        out.append(text[start:end])
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact_header(name: str, value: str) -> str:
    """The value as it may be shown: credential headers are masked."""
    return MASK if name.lower() in SECRET_HEADERS else value


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """URLs' userinfo masked, then every known secret (long enough to be distinctive)."""
    text = redact_url(text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= MIN_SECRET_MASKED and secret in text:
            text = text.replace(secret, MASK)
    return text


def secrets_of(options: Any, urls: Sequence[str] = ()) -> Set[str]:
    """Every secret the caller gave: passwords (-u, --proxy-user, URL and proxy userinfo),
    credential header values, and the Basic tokens built from them."""
    found: Set[str] = set()
    pairs = [options.user, options.proxy_user]
    for text in list(urls) + [options.proxy or ""]:
        userinfo = _userinfo_of(text)
        if userinfo is not None:
            pairs.append(_unquote(userinfo))
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


def redact_options(options: Any) -> Dict[str, Any]:
    """Every option value as it may be shown (passwords and credential headers masked)."""
    from .options import DEFAULTS
    shown = {name: getattr(options, name) for name in DEFAULTS}
    for name in ("user", "proxy_user"):
        if shown[name]:
            shown[name] = _mask_pair(shown[name])
    if shown["proxy"]:
        shown["proxy"] = redact_url(shown["proxy"] if "://" in shown["proxy"]
                                    else "http://" + shown["proxy"])
    shown["headers"] = tuple((k, redact_header(k, v)) for k, v in shown["headers"])
    return shown


def _userinfo_of(text: str) -> Optional[str]:
    scheme, sep, rest = text.partition("://")
    if not sep:
        rest = text
    authority = rest
    for stop in "/?#":
        authority = authority.partition(stop)[0]
    userinfo, at, _ = authority.rpartition("@")
    return userinfo if at and userinfo else None


def redact_argv(message: str, argv: Sequence[str]) -> str:
    """A usage error may echo argv: mask passwords after -u/--user/--proxy-user, credential
    header values after -H, and URL userinfo, wherever the message repeats them."""
    tokens = list(argv)
    masked: List[Tuple[str, str]] = []
    for index, token in enumerate(tokens):
        previous = tokens[index - 1] if index else ""
        shown = _mask_token(token, previous)
        if shown != token:
            masked.append((token, shown))
    for token, shown in sorted(masked, key=lambda pair: len(pair[0]), reverse=True):
        message = message.replace(token, shown)
    head, marker, extras = message.partition("unrecognized arguments: ")
    if marker:  # a typo dumps the rest of the line here: show option names only
        extras = " ".join(t if t.startswith("-") else MASK for t in extras.split(" "))
    return redact_url(head + marker + extras)


def _mask_token(token: str, previous: str) -> str:
    for flag in _SECRET_FLAGS:
        if previous == flag:
            return _mask_pair(token)
        for glue in ("=", "") if not flag.startswith("--") else ("=",):
            if token.startswith(flag + glue) and len(token) > len(flag + glue):
                return flag + glue + _mask_pair(token[len(flag + glue):])
    if previous in ("-H", "--header"):
        name, colon, _value = token.partition(":")
        if colon and name.strip().lower() in SECRET_HEADERS:
            return name + ": " + MASK
    return redact_url(token)


def _mask_pair(pair: str) -> str:
    user, colon, _password = pair.partition(":")
    return user + ":" + MASK if colon else pair


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


def _unquote(text: str) -> str:
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
            return basic(_unquote(user), _unquote(password))
        login = _unquote(user)
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
