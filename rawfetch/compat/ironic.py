"""ironic-python-agent's image download (extensions/standby.py), on rawfetch.

The agent switches with one line, run before it downloads (docs/ironic.md):

    standby.ImageDownload = rawfetch.compat.ironic.ImageDownload

`ImageDownload(image_info, time_obj=None, **config)` is an iterator of chunks with
`verify_image(path)`, `bytes_transferred` and `content_length`, like the agent's class, and
keeps the agent's contract (ironic_contract): its exception classes, the checksum verdict
from verify_image(), one retry budget and one deadline across the agent's own retry loop.
`stream_to_device()` writes a raw image onto a device with download()'s disk safety.
`image_info` is the dict ironic sends (urls, os_hash_algo/os_hash_value, checksum, proxies,
no_proxy, credentials); the agent's settings come from its CONF (agent_options()), and
`config` may override them under their oslo.config names, or set any rawfetch option under
its own name (on_event, resolve, retry_jitter, verify_written...). Other keys are the
agent's business and are ignored. What changes for an operator is in docs/ironic.md.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from .. import timing
from ..checksumfile import ALGO_BY_HEX_LENGTH
from ..errors import ChecksumMismatch, DeadlineExceeded, FetchError, InvalidRequest, mapped
from ..files import DownloadResult, download
from ..digest import parse_checksum
from ..options import DEFAULTS, TLS_VERSIONS, Options
from .ironic_contract import (AGENT_CONFIG, JOBS, REPLAY_NOTE, Job, agent_module,
                              raise_agent_error)

__all__ = ["ImageDownload", "stream_to_device", "image_plan", "ImagePlan", "IPA_DEFAULTS",
           "agent_options", "DeviceResult"]

IMAGE_CHUNK_SIZE = 1 << 20   # the agent's IMAGE_CHUNK_SIZE: what one iteration yields
VERIFY_BLOCK = 1 << 20       # verify_image() reads the written image back a MiB at a time
WIPE_BYTES = 1 << 20         # a failed image's first MiB zeroed on a device (as SafeDisk does)
# The agent's defaults (IPA 13.0.0's ironic_python_agent/config.py), used for the names
# neither the agent's CONF nor config gives, so an unconfigured adapter is as patient as an
# unconfigured agent.
IPA_DEFAULTS: Dict[str, Any] = {
    "image_download_connection_timeout": 60,
    "image_download_connection_retries": 9,
    "image_download_connection_retry_interval": 10,
    "image_download_max_duration": 0,          # 0 = no limit
    "insecure": False,
    "cafile": None,
    "certfile": None,
    "keyfile": None,
    "tls_min_version": "1.2",
    "md5_enabled": False,                      # IPA 13: MD5 is opt-in
    "image_server_auth_strategy": "noauth",
    "image_server_user": None,
    "image_server_password": None,
}
# The agent sleeps a fixed interval (long on purpose: a switch port's hold-down after a
# link flap). rawfetch's full jitter averages half its ceiling, so the ceiling grows to 3x
# the interval: from the third consecutive failure on the mean sleep is 1.5x the interval,
# and 9 retries wait ~12 intervals on average, never less patient than the agent's 9.
RETRY_CEILING_FACTOR = 3
AUTH_STRATEGIES = ("noauth", "http_basic")
URL_SCHEMES = ("http", "https")     # the keys of image_info['proxies'] too


class ImagePlan(NamedTuple):
    """What one image_info and config become: the URLs in order, and rawfetch's options."""
    urls: Tuple[str, ...]
    options: Options


# ------------------------------------------------------------------ image_info -> options
def image_plan(image_info: Mapping[str, Any], **config: Any) -> ImagePlan:
    """Map image_info and the agent's config onto rawfetch (see docs/ironic.md for the
    table). Everything is checked here, before any connection: a wrong type or a missing
    credential is InvalidRequest."""
    if not isinstance(image_info, Mapping):
        raise InvalidRequest("image_info must be a dict, not %s" % type(image_info).__name__)
    conf, own = _split_config(config)
    urls = _urls(image_info)
    options = _network_options(conf)
    options.update(_checksum_options(image_info, conf["md5_enabled"]))
    schemes = {_scheme(url) for url in urls + (options.get("checksum_url") or "",) if url}
    options.update(_proxy_options(image_info, sorted(schemes)))
    options.update(_auth_options(image_info, conf))
    options.update(own)        # rawfetch's own names are the more specific: they win
    return ImagePlan(urls, Options(**options))


def _split_config(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the agent's settings over its defaults, rawfetch options given by their names).
    Every other key is another agent setting: not ours, ignored."""
    conf = dict(IPA_DEFAULTS)
    own: Dict[str, Any] = {}
    for key, value in config.items():
        if key in IPA_DEFAULTS:        # insecure and cafile: the same name in both
            conf[key] = value
        elif key in DEFAULTS:
            own[key] = value
    return conf, own


def _urls(info: Mapping[str, Any]) -> Tuple[str, ...]:
    urls = info.get("urls")
    if not isinstance(urls, (list, tuple)) or not urls:
        raise InvalidRequest("image_info['urls'] must be a non-empty list of URLs")
    for url in urls:
        if not isinstance(url, str) or _scheme(url) not in URL_SCHEMES:
            raise InvalidRequest("image_info['urls'] holds %r: only http:// and https:// "
                                 "URLs can be downloaded" % (url if not isinstance(url, str)
                                                             else url[:80],))
    return tuple(urls)


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def _text(info: Mapping[str, Any], key: str, where: str = "image_info") -> Optional[str]:
    """info[key] as a str, None when absent or null; another type is refused."""
    value = info.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest("%s['%s'] must be a string, not %s"
                             % (where, key, type(value).__name__))
    return value


def _number(conf: Mapping[str, Any], key: str, whole: bool = False) -> float:
    value = conf[key]
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 <= value < float("inf"):
        raise InvalidRequest("config %s must be a %s >= 0, not %r" % (
            key, "whole number" if whole else "number", value))
    return value


def _flag(conf: Mapping[str, Any], key: str) -> bool:
    if not isinstance(conf[key], bool):
        raise InvalidRequest("config %s must be True or False, not %r" % (key, conf[key]))
    return conf[key]


def _network_options(conf: Mapping[str, Any]) -> Dict[str, Any]:
    """Timeouts, the retry budget, the deadline and TLS from the agent's config names."""
    timeout = _number(conf, "image_download_connection_timeout")
    if not timeout:
        raise InvalidRequest("config image_download_connection_timeout must be > 0")
    interval = _number(conf, "image_download_connection_retry_interval")
    limit = _number(conf, "image_download_max_duration")
    options: Dict[str, Any] = dict(
        dns_timeout=timeout, connect_timeout=timeout, idle_timeout=timeout,
        # a trickle is cut after the operator's own patience, never later than rawfetch's
        speed_time=min(timeout, DEFAULTS["speed_time"]),
        retries=_number(conf, "image_download_connection_retries", whole=True),
        retry_delay=interval, retry_max_delay=interval * RETRY_CEILING_FACTOR,
        max_time=limit or None, insecure=_flag(conf, "insecure"))
    _flag(conf, "md5_enabled")
    version = conf["tls_min_version"]
    if version not in TLS_VERSIONS:
        raise InvalidRequest("config tls_min_version must be %s, not %r"
                             % (" or ".join(map(repr, TLS_VERSIONS)), version))
    options["tls_min"] = version
    cafile, certfile, keyfile = (_text(conf, key, "config")
                                 for key in ("cafile", "certfile", "keyfile"))
    if cafile:
        options["cafile"] = cafile
    if certfile and keyfile:           # the agent presents a client certificate only then
        options.update(cert=certfile, key=keyfile)
    return options


def _checksum_options(info: Mapping[str, Any], md5_enabled: bool) -> Dict[str, Any]:
    """The agent's order: os_hash_algo/os_hash_value when hashlib has the algorithm, else
    `checksum` (a value whose length names the algorithm, or a checksum file's URL).
    The agent refuses an image with neither, and so does the adapter."""
    algo, value = _text(info, "os_hash_algo"), _text(info, "os_hash_value")
    checksum = _text(info, "checksum")
    if bool(algo) != bool(value):
        raise InvalidRequest("image_info needs both os_hash_algo and os_hash_value, or neither")
    if algo and _hashlib_has(algo):
        return _checksum_from(value or "", algo, md5_enabled)
    if checksum:
        return _checksum_from(checksum, None, md5_enabled)
    unsupported = " (os_hash_algo %r is not in this Python's hashlib)" % algo if algo else ""
    raise InvalidRequest("image_info has no usable checksum%s: give os_hash_algo and "
                         "os_hash_value, or checksum" % unsupported)


def _hashlib_has(algo: str) -> bool:
    import hashlib   # lazily: it loads OpenSSL's libcrypto
    return algo in hashlib.algorithms_available


def _checksum_from(value: str, algo: Optional[str], md5_enabled: bool) -> Dict[str, Any]:
    """A URL -> checksum_url (the entry for urls[0]'s file name, as the agent looks it up);
    a bare value -> checksum "algo:hex", the algorithm from its length when not given."""
    value = value.strip()
    if _scheme(value) in URL_SCHEMES:
        return {"checksum_url": value}
    if algo is None:
        algo = ALGO_BY_HEX_LENGTH.get(len(value))
        if algo is None:
            raise InvalidRequest("image_info['checksum'] has %d characters: not the length "
                                 "of any known hex digest (32 md5, 64 sha256, 128 sha512)"
                                 % len(value))
        if algo == "md5" and not md5_enabled:
            raise InvalidRequest("image_info['checksum'] is an MD5 and config md5_enabled "
                                 "is False")
    spec = "%s:%s" % (algo, value)
    parse_checksum(spec)       # the hex digits and their count, before any connection
    return {"checksum": spec}


def _proxy_options(info: Mapping[str, Any], schemes: Any) -> Dict[str, Any]:
    """image_info['proxies'] is keyed by the scheme of the URL fetched, as requests reads
    it; rawfetch has one proxy per download, so every URL of it (the image's mirrors and
    a checksum URL) must want the same one. A scheme not in the dict uses the environment
    (http_proxy, https_proxy), as requests does; a null or empty value means direct."""
    proxies = info.get("proxies") or {}
    if not isinstance(proxies, Mapping):
        raise InvalidRequest("image_info['proxies'] must be a dict like {'http': URL, "
                             "'https': URL}")
    for key, value in proxies.items():
        if key not in URL_SCHEMES:
            raise InvalidRequest("image_info['proxies'] key %r is not supported: only "
                                 "'http' and 'https' (the image URL's scheme)" % (key,))
        if value is not None and not isinstance(value, str):
            raise InvalidRequest("image_info['proxies']['%s'] must be a URL string" % key)
    wanted = {scheme: (proxies[scheme] or "") if scheme in proxies else None
              for scheme in schemes}
    if len(set(wanted.values())) > 1:
        raise InvalidRequest("the image URLs use %s, and image_info['proxies'] gives them "
                             "different proxies: rawfetch uses one proxy per download; give "
                             "every scheme the same proxy, or URLs of one scheme"
                             % " and ".join(schemes))
    options: Dict[str, Any] = {}
    proxy = next(iter(wanted.values()), None)
    if proxy is not None:
        if proxy:
            from ..proxy import parse_proxy
            parse_proxy(proxy)         # refused now, not at the first connection
        options["proxy"] = proxy
    no_proxy = info.get("no_proxy")
    if no_proxy:                       # the agent ignores an empty one too
        options["no_proxy"] = no_proxy  # per download: os.environ is never changed
    return options


def _auth_options(info: Mapping[str, Any], conf: Mapping[str, Any]) -> Dict[str, Any]:
    """The agent's order: image_request_authorization (a whole header value, base64 as
    ironic sends it), else http_basic with image_info's user and password, else
    http_basic from the agent's config."""
    supplied = info.get("image_request_authorization")
    if supplied:
        return {"headers": [("Authorization", _decoded_header(supplied))]}
    for source, where in ((info, "image_info"), (conf, "config")):
        strategy = _text(source, "image_server_auth_strategy", where)
        if strategy is not None and strategy not in AUTH_STRATEGIES:
            raise InvalidRequest("%s['image_server_auth_strategy'] must be one of %s, not "
                                 "%r" % (where, ", ".join(AUTH_STRATEGIES), strategy[:40]))
        if strategy == "http_basic":
            return {"user": _basic_pair(source, where)}
    return {}


def _decoded_header(value: Any) -> str:
    """ironic base64-encodes the header value; a value that is not base64 of printable
    text is refused without echoing it (it is a secret)."""
    import base64
    import binascii
    if not isinstance(value, (str, bytes)):
        raise InvalidRequest("image_info['image_request_authorization'] must be a string")
    try:
        raw = value.encode("ascii") if isinstance(value, str) else value
        header = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        header = ""
    if not header.strip() or not header.isprintable():
        raise InvalidRequest("image_info['image_request_authorization'] is not base64 of "
                             "a header value (ironic sends it base64-encoded)")
    return header


def _basic_pair(source: Mapping[str, Any], where: str) -> str:
    user = _text(source, "image_server_user", where)
    password = _text(source, "image_server_password", where)
    missing = [name for name, value in (("user", user), ("password", password)) if not value]
    if missing:
        raise InvalidRequest("%s asks for http_basic but has no image_server_%s"
                             % (where, " or image_server_".join(missing)))
    if ":" in (user or ""):
        raise InvalidRequest("%s['image_server_user'] holds ':', which Basic "
                             "authentication cannot carry (RFC 7617)" % where)
    return "%s:%s" % (user, password)


# ------------------------------------------------------------------ the agent's config
def agent_options(conf: Any = None) -> Dict[str, Any]:
    """The agent's download settings from its oslo.config CONF: `conf`, else the running
    agent's (ironic_python_agent.config.CONF) when the agent is importable. Only the
    names of IPA_DEFAULTS that CONF has registered; {} without the agent. ImageDownload
    and stream_to_device() call it; pass its result as **config to use it explicitly."""
    if conf is None:
        conf = getattr(agent_module(AGENT_CONFIG), "CONF", None)
        if conf is None:
            return {}
    found: Dict[str, Any] = {}
    for name in IPA_DEFAULTS:
        try:
            found[name] = getattr(conf, name)
        except Exception:  # oslo.config's NoSuchOptError: not registered in this process
            continue
    return found


def _config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The agent's CONF, overridden by the config given explicitly."""
    return {**agent_options(), **config}


def _image_id(image_info: Any) -> str:
    """image_info['id'] for the agent's error texts (its exceptions take one)."""
    if isinstance(image_info, Mapping) and image_info.get("id") is not None:
        return str(image_info["id"])
    return "(no image id)"


def _job_key(image_info: Any, time_obj: Optional[float]) -> Optional[Tuple[Any, ...]]:
    """One download of one image by the agent: its id, URLs and the time_obj every try of
    the agent's loop passes (a later prepare_image of the same image is a new job).
    Without a time_obj the object is its own job."""
    if time_obj is None or not isinstance(image_info, Mapping):
        return None
    urls = image_info.get("urls")
    urls = tuple(urls) if isinstance(urls, (list, tuple)) else (repr(urls),)
    return (_image_id(image_info), urls, time_obj)


# ------------------------------------------------------------------ the agent's API
class ImageDownload:
    """The image as an iterator of chunks (up to IMAGE_CHUNK_SIZE), over image_info's
    `urls` as mirrors, resumed invisibly after a cut; `verify_image(path)`,
    `bytes_transferred` and `content_length` as in the agent. The first request happens
    here, so a 404 or a refused checksum file fails at construction, as in the agent.
    Errors are the agent's classes (ironic_contract); a checksum mismatch is raised by
    verify_image(), as the agent's own class does. Tries of the agent's loop for the same
    image and time_obj share one retry budget and one deadline (ironic_contract.Job)."""

    def __init__(self, image_info: Mapping[str, Any], time_obj: Optional[float] = None,
                 **config: Any) -> None:
        self.image_id = _image_id(image_info)
        self._key = _job_key(image_info, time_obj)
        self._bytes_transferred = 0
        self._finished = False
        self._mismatch: Optional[ChecksumMismatch] = None
        replay = ""
        try:
            self.start_time = _start_time(time_obj)
            self.job = JOBS.get(self._key, lambda: _new_job(image_info, self.start_time,
                                                            _config(config)))
            replay = REPLAY_NOTE if self.job.final is not None else ""
            self.stream = self.job.open()
        except FetchError as exc:
            raise_agent_error(exc, self.image_id, replay)
        self.urls, self.options = self.job.urls, self.job.options

    def __iter__(self) -> "ImageDownload":
        return self

    def __next__(self) -> bytes:
        if self._finished:
            raise StopIteration
        chunk = self._read_chunk()
        if not chunk:
            self._finished = True
            self.stream.close()
            raise StopIteration
        self._bytes_transferred += len(chunk)
        return chunk

    def _read_chunk(self) -> bytes:
        """Up to IMAGE_CHUNK_SIZE bytes; at the end a mismatch is kept for verify_image()
        (the bytes before it still go to the agent, which writes them)."""
        buffer = bytearray(IMAGE_CHUNK_SIZE)
        view = memoryview(buffer)
        filled = 0
        try:
            while filled < IMAGE_CHUNK_SIZE and self._mismatch is None:
                got = self.stream.readinto(view[filled:])
                if not got:
                    break
                filled += got
        except ChecksumMismatch as exc:
            self._mismatch = exc.with_traceback(None)   # its frames would hold the buffer
            self.job.ended(exc, self.stream.ledger.pieces)
        except FetchError as exc:
            self.stream.close()
            self.job.ended(exc)
            raise_agent_error(exc, self.image_id)
        except BaseException:
            self.stream.close()
            raise
        finally:
            view.release()
        return bytes(buffer) if filled == IMAGE_CHUNK_SIZE else bytes(buffer[:filled])

    @property
    def bytes_transferred(self) -> int:
        """Image bytes handed out, each once: bytes re-sent by a server after a cut
        (a 200 to a Range request) are not counted."""
        return self._bytes_transferred

    @property
    def content_length(self) -> Optional[int]:
        """The image's length as the server announced it (None when it did not)."""
        return self.stream.size

    @property
    def elapsed(self) -> float:
        """Seconds since start_time (the agent's time_obj, else construction)."""
        return timing.wall() - self.start_time

    def verify_image(self, image_location: str) -> None:
        """Read the first bytes_transferred bytes of image_location back (a file or a
        device) and compare their digest with the expected one; raises the agent's
        ImageChecksumError (rawfetch's ChecksumMismatch without the agent) when they
        differ or the image was not read to its end. A regular file that fails is
        removed; a device gets its first MiB zeroed (it must not boot half an image)."""
        algo, expected = self.stream.checksum
        try:
            if not self._finished:
                raise ChecksumMismatch("%s: the image was not read to its end (%s bytes so "
                                       "far); it cannot be verified" % (image_location, format(
                                           self._bytes_transferred, ",")), url=self.stream.url)
            got = _file_digest(image_location, algo, self._bytes_transferred)
            if self._mismatch is not None or got != expected:
                self._failed_image(image_location)
                raise self._mismatch or ChecksumMismatch(
                    "%s: %s of its first %s bytes is %s, expected %s" % (
                        image_location, algo, format(self._bytes_transferred, ","), got,
                        expected), url=self.stream.url)
        except FetchError as exc:
            digest = self.stream.digest or ""
            raise_agent_error(exc, self.image_id, checksums=(
                image_location, expected, digest.partition(":")[2] or "(not computed)"))
        JOBS.done(self._key)

    def _failed_image(self, location: str) -> None:
        """What failed verification never stays usable: a file goes, a disk's first MiB
        (partition table, boot sector) is zeroed."""
        import os
        import stat
        with mapped("write", path=location + " (discarding a failed image)"):
            mode = os.stat(location).st_mode
            if stat.S_ISREG(mode):
                os.unlink(location)
            elif stat.S_ISBLK(mode):
                with open(location, "r+b") as device:
                    device.write(bytes(min(WIPE_BYTES, self._bytes_transferred)))
                    device.flush()
                    os.fsync(device.fileno())

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> "ImageDownload":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _start_time(time_obj: Optional[float]) -> float:
    if time_obj is None:
        return timing.wall()
    if isinstance(time_obj, bool) or not isinstance(time_obj, (int, float)):
        raise InvalidRequest("time_obj must be a time.time() value, not %r" % (time_obj,))
    return float(time_obj)


def _new_job(image_info: Mapping[str, Any], start_time: float,
             config: Mapping[str, Any]) -> Job:
    plan = image_plan(image_info, **config)
    return Job(plan.urls, _remaining_duration(plan.options, start_time))


def _remaining_duration(options: Options, start_time: float) -> Options:
    """The agent counts image_download_max_duration from time_obj (its first try): what
    is left of it bounds the job."""
    if options.max_time is None:
        return options
    left = options.max_time - (timing.wall() - start_time)
    if left <= 0:
        raise DeadlineExceeded("image_download_max_duration of %gs ran out before this "
                               "download started" % options.max_time)
    return options.replace(max_time=left)


def _file_digest(path: str, algo: str, size: int) -> str:
    """Hex digest of the first `size` bytes of `path`; a shorter file cannot match."""
    import hashlib
    hasher = hashlib.new(algo)
    left = size
    with mapped("write", path=path + " (reading it back)"):
        with open(path, "rb") as handle:
            while left:
                block = handle.read(min(VERIFY_BLOCK, left))
                if not block:
                    raise ChecksumMismatch("%s holds %s bytes, fewer than the image's %s"
                                           % (path, format(size - left, ","),
                                              format(size, ",")))
                hasher.update(block)
                left -= len(block)
    return hasher.hexdigest()


class DeviceResult(DownloadResult):
    """stream_to_device()'s DownloadResult with the names the agent's log lines read."""
    __slots__ = ()

    @property
    def bytes_transferred(self) -> int:
        return self.bytes

    @property
    def content_length(self) -> int:
        """The image's length: the download is complete and verified when this exists."""
        return self.bytes


def stream_to_device(image_info: Mapping[str, Any], device: str,
                     **config: Any) -> DeviceResult:
    """The agent's raw streaming onto `device`, as rawfetch.download() does it in place:
    qcow2/VMDK refused, the first MiB zeroed first and written last after the checksum
    passed, zeroed again on failure, fsynced (the agent's raw streaming never fsyncs).
    A regular file must exist (in_place); config may set any rawfetch option, e.g.
    verify_written=True to read the device back. The agent's CONF applies as in
    ImageDownload, and failures are the agent's exception classes."""
    image_id = _image_id(image_info)
    try:
        plan = image_plan(image_info, **{"in_place": True, **_config(config)})
        result = download(plan.urls[0], device, urls=plan.urls[1:], options=plan.options)
    except FetchError as exc:
        raise_agent_error(exc, image_id)
    return DeviceResult(*result)
