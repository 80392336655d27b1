"""What a secret looks like when it must be shown: URL passwords, credential headers,
argv and option values masked.

The bottom of the stack: errors, events, http11, options and credentials all mask with
these, so this module imports nothing from rawfetch (and nothing costly from the
stdlib): an error message can be redacted before anything else has loaded.

Where a secret must never show: stderr, error messages, events, --log-json, logging,
the .part.json sidecar, and a usage error echoing argv.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

MASK = "***"
# Credential headers (RFC 9110 s11.6.2, s11.7.2; RFC 6265 s5.4): never echoed in a
# message, masked wherever headers are shown, and dropped when a redirect changes the
# origin (requests CVE-2018-18074 sent them on to the new host).
SECRET_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie"))
MIN_SECRET_MASKED = 4            # shorter secrets are only masked where their place is
                                 # known (URL userinfo, header values): "pw" inside free
                                 # text would garble unrelated words
_URL_END = frozenset("/?#\"'<>()[]{} \t\r\n,;|")  # where an authority ends inside free text
_SECRET_FLAGS = ("-u", "--user", "--proxy-user", "-U")   # their value is USER:PASSWORD
_PAIR_OPTIONS = ("user", "proxy_user")                    # option values that are USER:PASS


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
            out.append(mask_pair(userinfo) if ":" in userinfo else MASK)
            out.append("@")
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


def redact_options(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Option values (name -> value) as they may be shown: the USER:PASS options, the
    proxy URL's userinfo and credential header values masked."""
    shown = dict(values)
    for name in _PAIR_OPTIONS:
        if shown.get(name):
            shown[name] = mask_pair(shown[name])
    proxy = shown.get("proxy")
    if proxy:
        shown["proxy"] = redact_url(proxy if "://" in proxy else "http://" + proxy)
    if "headers" in shown:
        shown["headers"] = tuple((k, redact_header(k, v)) for k, v in shown["headers"])
    return shown


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
            return mask_pair(token)
        for glue in ("=", "") if not flag.startswith("--") else ("=",):
            if token.startswith(flag + glue) and len(token) > len(flag + glue):
                return flag + glue + mask_pair(token[len(flag + glue):])
    if previous in ("-H", "--header"):
        name, colon, _value = token.partition(":")
        if colon and name.strip().lower() in SECRET_HEADERS:
            return name + ": " + MASK
    return redact_url(token)


def mask_pair(pair: str) -> str:
    """USER:PASSWORD -> USER:***; text without a colon is shown as it is."""
    user, colon, _password = pair.partition(":")
    return user + ":" + MASK if colon else pair


def userinfo_of(text: str) -> Optional[str]:
    """The userinfo of a URL or of a scheme-less proxy address, None when it has none."""
    _scheme, sep, rest = text.partition("://")
    authority = rest if sep else text
    for stop in "/?#":
        authority = authority.partition(stop)[0]
    userinfo, at, _ = authority.rpartition("@")
    return userinfo if at and userinfo else None
