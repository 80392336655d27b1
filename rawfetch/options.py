"""The one options vocabulary shared by request(), open(), download() and the command.

Each CLI flag is the keyword with dashes for underscores. Defaults suit a ramdisk on a
slow LAN: bounded everywhere, patient enough for a busy master node.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from .errors import InvalidRequest

DEFAULTS: Dict[str, Any] = {
    "dns_timeout": 10.0,        # s; one lookup (getaddrinfo runs in a worker thread)
    "connect_timeout": 10.0,    # s; per address (Happy Eyeballs starts the next after 250 ms)
    "idle_timeout": 30.0,       # s; longest silence in TLS handshake, head or body
    "speed_limit": 1024,        # bytes/s; 0 disables the low-speed rule
    "speed_time": 30.0,         # s; window the speed_limit average is taken over
    "max_time": None,           # s; one deadline over everything, retries included
    "resolve": (),              # "HOST:PORT:ADDR[,ADDR...]" pins, like curl --resolve
    "resolver": None,           # callable(host, port) -> [address, ...], under dns_timeout
    "cafile": None,             # PEM bundle replacing the system CAs
    "insecure": False,          # skip certificate and hostname checks
    "headers": (),              # extra request headers: [(name, value)], dict or "Name: value"
    "max_redirs": 10,           # redirects followed; one more raises TooManyRedirects
    "allow_insecure_redirect": False,  # follow https -> http redirects
    "retries": 10,              # attempts after the first, over the whole job
    "retry_delay": 1.0,         # s; base of the exponential backoff (full jitter)
    "retry_max_delay": 30.0,    # s; cap of one backoff sleep
    "retry_jitter": True,       # full jitter on sleeps; False only to measure herd effects
    "checksum": None,           # "ALGO:HEX", any hashlib algorithm (of the bytes downloaded)
    "gunzip": False,            # download(): decompress on the way (checksum = compressed)
    "in_place": False,          # download(): write an existing file directly, no .part
    "on_event": None,           # callable(dict) receiving every step as an event
    # proxies, credentials, client certificates (see proxy.py and credentials.py)
    "proxy": None,              # "[http://][user:pass@]host[:port]"; "" = none; None = env
    "no_proxy": None,           # "host,.domain,10.0.0.0/8,*" (str or list); None = env
    "trust_env": True,          # read http_proxy/https_proxy/all_proxy/no_proxy
    "proxy_user": None,         # "USER:PASS" for the proxy (overrides the proxy URL's)
    "user": None,               # "USER:PASS" for the origin (Basic), over URL userinfo/netrc
    "netrc": False,             # origin credentials from $NETRC or ~/.netrc
    "netrc_file": None,         # origin credentials from this netrc file
    "cert": None,               # client certificate, PEM (may hold the key too)
    "key": None,                # client private key, PEM
    "capath": None,             # directory of hashed CA certificates (c_rehash)
    "tls_min": "1.2",           # lowest TLS version: "1.2" or "1.3"
}

_FLOATS = ("dns_timeout", "connect_timeout", "idle_timeout", "speed_time",
           "retry_delay", "retry_max_delay")
_INTS = ("speed_limit", "max_redirs", "retries")
_BOOLS = ("insecure", "allow_insecure_redirect", "retry_jitter", "gunzip", "in_place",
          "trust_env", "netrc")
_OPTIONAL_STRS = ("proxy", "proxy_user", "user", "netrc_file", "cert", "key", "capath")
TLS_VERSIONS = ("1.2", "1.3")


class Options:
    """Validated, immutable option values."""

    __slots__ = tuple(DEFAULTS)

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(DEFAULTS)
        if unknown:
            raise InvalidRequest("unknown option(s): %s" % ", ".join(sorted(unknown)))
        values = dict(DEFAULTS)
        values.update(kwargs)
        for name in _FLOATS:
            values[name] = _number(name, values[name], float)
        for name in _INTS:
            values[name] = _number(name, values[name], int)
        for name in _BOOLS:
            if not isinstance(values[name], bool):
                raise InvalidRequest("option %s must be True or False, not %r"
                                     % (name, values[name]))
        for name in ("resolver", "on_event"):
            if values[name] is not None and not callable(values[name]):
                raise InvalidRequest("option %s must be callable" % name)
        if values["max_time"] is not None:
            values["max_time"] = _number("max_time", values["max_time"], float)
        values["headers"] = normalize_headers(values["headers"])
        _check_access_options(values)
        values["resolve"] = tuple(values["resolve"] or ())
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Options are immutable; use replace()")

    def replace(self, **changes: Any) -> "Options":
        values = {name: getattr(self, name) for name in DEFAULTS}
        values.update(changes)
        return Options(**values)

    def __repr__(self) -> str:
        from .credentials import redact_options
        changed = ["%s=%r" % (k, v) for k, v in redact_options(self).items()
                   if v != DEFAULTS[k]]
        return "Options(%s)" % ", ".join(changed)


def _check_access_options(values: Dict[str, Any]) -> None:
    """Types of the proxy/credential/TLS options (their contents are checked on use)."""
    for name in _OPTIONAL_STRS:
        if values[name] is not None and not isinstance(values[name], str):
            raise InvalidRequest("option %s must be a str or None" % name)
    spec = values["no_proxy"]
    if spec is not None and not isinstance(spec, str) and not (
            isinstance(spec, (list, tuple)) and all(isinstance(s, str) for s in spec)):
        raise InvalidRequest("option no_proxy must be a str or a list of str")
    if values["tls_min"] not in TLS_VERSIONS:
        raise InvalidRequest("option tls_min must be one of %s" % ", ".join(TLS_VERSIONS))
    for name in ("user", "proxy_user"):
        if values[name] is not None and ":" not in values[name]:
            raise InvalidRequest("option %s needs USER:PASSWORD (rawfetch never prompts "
                                 "for a password)" % name)


def _number(name: str, value: Any, kind: Callable[[Any], Any]) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest("option %s must be a number, not %r" % (name, value))
    if value < 0 or value != value:
        raise InvalidRequest("option %s must be >= 0, not %r" % (name, value))
    return kind(value)


HeaderInput = Union[None, Dict[str, str], Iterable[Union[str, Tuple[str, str]]]]


def normalize_headers(headers: HeaderInput) -> Tuple[Tuple[str, str], ...]:
    """Accept a dict, (name, value) pairs or curl-style "Name: value" strings."""
    if not headers:
        return ()
    items: List[Tuple[str, str]] = []
    source = headers.items() if isinstance(headers, dict) else headers
    for item in source:
        if isinstance(item, str):
            name, colon, value = item.partition(":")
            if not colon:  # echo only a first word: the line may be a mistyped credential
                first, space, _ = item.partition(" ")
                raise InvalidRequest("header %s is not 'Name: value'" % (
                    "%r..." % first[:40] if space else "of %d characters" % len(item)))
            item = (name.strip(), value.strip())
        if not (isinstance(item, tuple) and len(item) == 2
                and all(isinstance(part, str) for part in item)):
            raise InvalidRequest("header %r is not a (name, value) pair of str" % (item,))
        items.append(item)
    return tuple(items)


def make_options(options: Optional[Options], kwargs: Dict[str, Any]) -> Options:
    if options is None:
        return Options(**kwargs)
    return options.replace(**kwargs) if kwargs else options
