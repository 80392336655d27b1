"""The one options vocabulary shared by request(), open(), download() and the command.

Each CLI flag is the keyword with dashes for underscores. Defaults suit a ramdisk on a
slow LAN: bounded everywhere, patient enough for a busy master node.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from .errors import InvalidRequest
from .redact import redact_options

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
    # image formats (validated by _check_formats below)
    "decompress": "none",       # auto|gzip|xz|bzip2|none, on the way (checksum = compressed)
    "xz_memlimit": 256 << 20,   # bytes an xz stream may need (xz -9 needs 65 MiB to decode)
    "decode_threads": 0,        # threads decoding a multi-block xz stream; 0 = available cores
    "checksum_url": None,       # URL of a SHA256SUMS-style file holding the image's checksum
    "checksum_name": None,      # its entry to use (default: the image URL's last segment)
    "metalink": None,           # Metalink 4 (.meta4) URL or path: mirrors, size, hashes, pieces
    "metalink_name": None,      # its <file> to use (default: the only one)
    "metalink_location": None,  # ISO 3166-1 alpha-2: the Metalink's mirrors there first
    "on_event": None,           # callable(dict) receiving every step as an event
    "limit_rate": 0.0,          # bytes/s averaged over the job (curl --limit-rate); 0 = none
    "splay": 0.0,               # s; random wait in [0, splay] before the first request
    "splay_seed": None,         # text making splay (and mirror_order="hash") deterministic
    "mirror_order": "ordered",  # "ordered", "random" (per run) or "hash" (by splay_seed/host)
    "preserve_on_error": False,  # leave the first MiB as it is after a failure (debugging)
    "allow_any_format": False,  # write qcow2/VMDK output raw instead of refusing it
    "verify_written": False,    # read the written range back and compare its sha256
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

# The enumerations, defined here once: validation, the command's choices and the code
# that acts on them (decoders, mirror arrangement, the TLS context) all use these.
DECOMPRESS_KINDS = ("auto", "gzip", "xz", "bzip2", "none")
MIRROR_ORDERS = ("ordered", "random", "hash")
TLS_VERSIONS = ("1.2", "1.3")    # tls_min: the lowest version offered (RFC 8996 retired 1.0/1.1)

_FLOATS = ("dns_timeout", "connect_timeout", "idle_timeout", "speed_time",
           "retry_delay", "retry_max_delay", "limit_rate", "splay")
_INTS = ("speed_limit", "max_redirs", "retries")
_BOOLS = ("insecure", "allow_insecure_redirect", "retry_jitter", "gunzip", "in_place",
          "preserve_on_error", "allow_any_format", "verify_written",
          "trust_env", "netrc")
_OPTIONAL_STRS = ("proxy", "proxy_user", "user", "netrc_file", "cert", "key", "capath")


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
        _pace(values, "speed_limit" in kwargs)
        if values["mirror_order"] not in MIRROR_ORDERS:
            raise InvalidRequest("mirror_order must be one of %s, not %r"
                                 % (", ".join(MIRROR_ORDERS), values["mirror_order"]))
        if values["splay_seed"] is not None and not isinstance(values["splay_seed"], str):
            raise InvalidRequest("splay_seed must be text, not %r" % (values["splay_seed"],))
        _check_formats(values)
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
        values = {name: getattr(self, name) for name in DEFAULTS}
        changed = ["%s=%r" % (k, v) for k, v in redact_options(values).items()
                   if v != DEFAULTS[k]]
        return "Options(%s)" % ", ".join(changed)


def _pace(values: Dict[str, Any], explicit_speed_limit: bool) -> None:
    """limit_rate must never trip rawfetch's own low-speed rule: an explicit speed_limit at
    or above the rate is refused; the default one is lowered to half the rate."""
    rate, floor = values["limit_rate"], values["speed_limit"]
    if not rate or floor < rate:
        return
    if explicit_speed_limit:
        raise InvalidRequest("speed_limit %d bytes/s is at or above limit_rate %g bytes/s: "
                             "every transfer would abort as too slow; lower speed_limit "
                             "below the rate" % (floor, rate))
    values["speed_limit"] = int(rate // 2)


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
    if not 0 <= value < float("inf"):   # also refuses NaN; inf would overflow timers
        raise InvalidRequest("option %s must be a finite number >= 0, not %r" % (name, value))
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


# ---------------------------------------------------------------- image formats
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: Any) -> int:
    """'256M', '1.5G', '512k', '4096' (or an int) -> bytes. K/M/G/T are powers of 1024,
    as in curl's --limit-rate and xz's --memlimit; fractions are rounded down."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    if not isinstance(text, str):
        raise InvalidRequest("size %r is not a number with an optional K/M/G/T suffix" % (text,))
    spec = text.strip()
    unit = spec[-1:].lower() if spec[-1:].isalpha() else ""
    number = spec[:-1] if unit else spec
    digits = number.replace(".", "", 1)
    if unit not in _SIZE_UNITS or not (digits.isascii() and digits.isdigit()):
        raise InvalidRequest("size %r is not a number with an optional K/M/G/T suffix "
                             "(powers of 1024)" % text)
    if "." not in number:
        return int(number) * _SIZE_UNITS[unit]    # exact, however large
    value = float(number) * _SIZE_UNITS[unit]
    if value == float("inf"):
        raise InvalidRequest("size %r is too large" % text)
    return int(value)


def _check_formats(values: Dict[str, Any]) -> None:
    """Validate the image-format keys in place; gunzip=True is the old spelling of gzip."""
    kind = values["decompress"]
    if kind not in DECOMPRESS_KINDS:
        raise InvalidRequest("option decompress must be one of %s, not %r"
                             % (", ".join(DECOMPRESS_KINDS), kind))
    if values["gunzip"]:
        if kind not in ("none", "gzip"):
            raise InvalidRequest("gunzip=True means decompress='gzip'; it conflicts with "
                                 "decompress=%r" % kind)
        values["decompress"] = "gzip"
    limit = parse_size(values["xz_memlimit"])
    if limit < 1:
        raise InvalidRequest("option xz_memlimit must be at least 1 byte")
    values["xz_memlimit"] = limit
    threads = values["decode_threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise InvalidRequest("option decode_threads must be an int >= 0 (0 = the available "
                             "cores), not %r" % (threads,))
    for name in ("checksum_url", "checksum_name"):
        if values[name] is not None and (not isinstance(values[name], str) or not values[name]):
            raise InvalidRequest("option %s must be a non-empty str, not %r" % (name, values[name]))
    if values["checksum_url"] is not None and values["checksum"] is not None:
        raise InvalidRequest("give either checksum or checksum_url, not both")
    if values["checksum_name"] is not None and values["checksum_url"] is None:
        raise InvalidRequest("checksum_name needs checksum_url")
    _check_metalink(values)


def _check_metalink(values: Dict[str, Any]) -> None:
    """metalink is a URL or a path; metalink_name and metalink_location need it (read by
    metalink.wire.merge_metalink); a location is two letters (RFC 5854 4.2.16.2)."""
    for name in ("metalink", "metalink_name", "metalink_location"):
        if values[name] is not None and (not isinstance(values[name], str) or not values[name]):
            raise InvalidRequest("option %s must be a non-empty str, not %r" % (name, values[name]))
    for name in ("metalink_name", "metalink_location"):
        if values[name] is not None and values["metalink"] is None:
            raise InvalidRequest("%s needs metalink" % name)
    place = values["metalink_location"]
    if place is not None and not (len(place) == 2 and place.isascii() and place.isalpha()):
        raise InvalidRequest("metalink_location %r is not an ISO 3166-1 alpha-2 country code "
                             "(two letters, as in a Metalink's location=)" % place[:40])
