"""fuel-agent's image download (fuel_agent/utils/artifact.py), on rawfetch.

fuel-agent switches with one line appended to fuel_agent/utils/artifact.py (docs/fuel.md):

    from rawfetch.compat.fuel import HttpUrl, GunzipStream  # noqa

`Manager.do_copyimage()` builds `Chain(uri, HttpUrl, [GunzipStream], device)` from that
module's names, so both drop-ins are picked up unchanged. `HttpUrl(uri)` is an iterator of
data_chunk_size chunks with `url`, `length`, `processed_bytes` and `target(filename)`;
`GunzipStream(stream)` decompresses it and, unlike fuel-agent's, checks the gzip end.

With no options (Chain passes none) the settings come from fuel-agent's CONF when
fuel_agent is importable (`conf_options()`); explicit keyword options override them.
Errors reach fuel-agent as its own classes (`agent_error()`, table in docs/fuel.md);
rawfetch's class and message stay in the text and as `__cause__`.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, Dict, Iterator, List, Optional

from ..decompress import GzipDecoder
from ..errors import (ChecksumMismatch, DecompressError, FetchError, InvalidRequest,
                      LocalWriteError, ResourceChanged, mapped)
from ..options import make_options
from ..output import close_fd, write_all
from ..resume import Stream

__all__ = ["HttpUrl", "GunzipStream", "fuel_options", "conf_options", "agent_error",
           "FUEL_DATA_CHUNK_SIZE", "RETRY_FOREVER"]

FUEL_DATA_CHUNK_SIZE = 1 << 20   # fuel-agent's CONF.data_chunk_size default
# fuel-agent's http_max_retries=0 means "retry for ever" (fuel_agent/utils/utils.py); the
# largest count RetryPolicy holds. A max_time given explicitly still ends the job.
RETRY_FOREVER = (1 << 31) - 1
# The low-speed window is this many http_request_timeouts: fuel-agent's 10 s default gives
# rawfetch's own 30 s; a 3 s timeout ends a trickle after 9 s (fuel-agent: never).
LOW_SPEED_WINDOWS = 3
# fsync(2): EINVAL/EROFS "fd is bound to a special file which does not support
# synchronization" (a pipe, /dev/null). Every other fsync failure (EIO, ENOSPC) is fatal.
UNSYNCABLE_ERRNOS = frozenset((errno.EINVAL, errno.EROFS))


def fuel_options(http_max_retries: int = 30, http_retry_delay: float = 2.0,
                 http_request_timeout: float = 10.0,
                 max_time: Optional[float] = None) -> Dict[str, Any]:
    """Map fuel-agent's settings onto rawfetch's options (defaults are fuel-agent's).

    http_max_retries -> retries (one budget for the whole image, not per reconnect;
    0 = RETRY_FOREVER, as in fuel-agent, ended only by max_time when one is given);
    http_retry_delay -> retry_delay (exponential with jitter from there, capped at 10x);
    http_request_timeout -> connect, idle and DNS timeouts, and the low-speed window.
    """
    retries = RETRY_FOREVER if int(http_max_retries) == 0 else int(http_max_retries)
    delay = float(http_retry_delay)
    timeout = float(http_request_timeout)
    return dict(retries=retries, retry_delay=delay, retry_max_delay=max(delay * 10, delay),
                connect_timeout=timeout, idle_timeout=timeout, dns_timeout=timeout,
                speed_time=timeout * LOW_SPEED_WINDOWS, max_time=max_time)


def _fuel_conf() -> Any:
    """fuel-agent's oslo.config CONF with its http_* and data_chunk_size options
    registered, or None when fuel-agent is not installed."""
    try:
        import fuel_agent.utils.artifact  # noqa: F401  registers data_chunk_size
        import fuel_agent.utils.utils  # noqa: F401  registers http_*
        from oslo_config import cfg
    except ImportError:
        return None
    return cfg.CONF


def conf_options(conf: Any = None) -> Dict[str, Any]:
    """rawfetch options from fuel-agent's CONF (or `conf`, anything with its attribute
    names); {} when fuel-agent is not importable, so rawfetch's defaults apply."""
    conf = _fuel_conf() if conf is None else conf
    if conf is None:
        return {}
    return fuel_options(conf.http_max_retries, conf.http_retry_delay,
                        conf.http_request_timeout)


def _conf_chunk_size() -> int:
    conf = _fuel_conf()
    return int(conf.data_chunk_size) if conf is not None else FUEL_DATA_CHUNK_SIZE


def agent_error(exc: FetchError) -> BaseException:
    """The fuel-agent exception for a rawfetch error (itself when fuel-agent is absent).

    Checksum -> ImageChecksumMismatchError; decompression -> WrongImageDataError; a bad
    URL or option -> WrongInputDataError; a local write error stays LocalWriteError (the
    agent has no class for it; its own code raises a bare OSError there); everything
    else (HTTP status, network, timeouts, a changed image) -> HttpUrlConnectionError.
    """
    if isinstance(exc, LocalWriteError):
        return exc
    try:
        from fuel_agent import errors
    except ImportError:
        return exc
    kind = errors.HttpUrlConnectionError
    if isinstance(exc, ChecksumMismatch):
        kind = errors.ImageChecksumMismatchError
    elif isinstance(exc, DecompressError):
        kind = errors.WrongImageDataError
    elif isinstance(exc, InvalidRequest):
        kind = errors.WrongInputDataError
    error = kind("%s: %s" % (type(exc).__name__, exc))
    error.__cause__ = exc
    return error


class _AgentErrors:
    """`with _AgentErrors():` -- a rawfetch error leaves as fuel-agent's (agent_error)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Optional[BaseException], tb: Any) -> bool:
        if isinstance(exc, FetchError):
            mapped_error = agent_error(exc)
            if mapped_error is not exc:
                raise mapped_error from exc
        return False


class _Target:
    """`filename` opened as fuel-agent's Target.target() opens it ('wb'), written at its
    position, restartable from zero, fsynced at the end with only UNSYNCABLE_ERRNOS
    tolerated; every OS error leaves as LocalWriteError through errors.mapped."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        with mapped("write", path=filename):
            self.fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            mode = os.fstat(self.fd).st_mode
        self.regular = stat.S_ISREG(mode)
        self.seekable = self.regular or stat.S_ISBLK(mode)

    def write(self, data: bytes) -> None:
        write_all(self.fd, data, self.filename)

    def restart(self) -> None:
        """The image changed on the server: what was written is thrown away."""
        if not self.seekable:
            raise ResourceChanged("the image changed on the server after bytes were written "
                                  "to %s, which cannot be rewound" % self.filename)
        with mapped("write", path=self.filename):
            os.lseek(self.fd, 0, os.SEEK_SET)
            if self.regular:
                os.ftruncate(self.fd, 0)

    def commit(self) -> None:
        """fsync (an EIO here is a disk that lost writes: it must fail), then close."""
        try:
            with mapped("write", path=self.filename):
                _fsync_unless_unsyncable(self.fd)
                fd, self.fd = self.fd, -1
                os.close(fd)
        finally:
            self.close()

    def close(self) -> None:
        close_fd(self)


def _fsync_unless_unsyncable(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # not an I/O failure only for UNSYNCABLE_ERRNOS; others re-raised
        if exc.errno not in UNSYNCABLE_ERRNOS:
            raise


def _write_out(chunks: Iterator[bytes], target: _Target) -> None:
    try:
        for chunk in chunks:
            target.write(chunk)
    except BaseException:
        target.close()
        raise
    target.commit()


class HttpUrl:
    """Iterator of fixed-size chunks of `url`; the first request happens here, like
    fuel-agent's constructor, so a bad URL or a 404 fails at construction."""

    def __init__(self, url: str, chunk_size: Optional[int] = None, **options: Any) -> None:
        self.url = str(url)
        self.chunk_size = chunk_size or _conf_chunk_size()
        self.processed_bytes = 0
        self._done = False
        self._restart_hooks: List[Callable[[], None]] = []
        merged = conf_options()
        merged.update(options)
        with _AgentErrors():
            self._stream = Stream(self.url, make_options(None, merged), restartable=True)
            try:
                self._stream.start()
            except BaseException:
                self._stream.close()
                raise
        self.length: Optional[int] = self._stream.size

    # ----------------------------------------------- following the stream's ledger
    def restart(self) -> None:
        """The image changed: a writer that can rewind does; otherwise the bytes already
        handed to fuel-agent's chain cannot be taken back."""
        if self.processed_bytes and not self._restart_hooks:
            raise ResourceChanged("the image changed on the server after %s bytes were "
                                  "handed on" % format(self.processed_bytes, ","), url=self.url)
        for hook in self._restart_hooks:
            hook()
        self.processed_bytes = 0

    def on_restart(self, hook: Callable[[], None]) -> None:
        self._restart_hooks.append(hook)

    # ----------------------------------------------------------- iteration
    def __iter__(self) -> "HttpUrl":
        return self

    def __next__(self) -> bytes:
        """The next full chunk (the last may be shorter), like urllib3's raw.read(n)."""
        if self._done:
            raise StopIteration
        with _AgentErrors():
            buffer = self._fill(bytearray(self.chunk_size))
        if not buffer:
            self._done = True
            self._stream.close()
            raise StopIteration
        self.processed_bytes += len(buffer)
        return bytes(buffer)

    next = __next__  # fuel-agent's Python 2 style Target API

    def _fill(self, buffer: bytearray) -> bytearray:
        """Fill `buffer`; bytes read before a restart from zero are dropped."""
        view = memoryview(buffer)
        filled = 0
        while filled < len(buffer):
            generation = self._stream.ledger.restarts
            got = self._stream.readinto(view[filled:])
            if self._stream.ledger.restarts != generation:   # restarted from zero
                self.restart()
                view[:got] = view[filled:filled + got]
                filled = 0
            if not got:
                break
            filled += got
        del view
        del buffer[filled:]
        return buffer

    def target(self, filename: str = "/dev/null") -> None:
        """Write every chunk to `filename` and fsync it, as fuel-agent's Target does; a
        changed image rewinds the file and starts over."""
        out = _Target(filename)
        self.on_restart(out.restart)
        _write_out(self, out)

    def close(self) -> None:
        self._stream.close()


class GunzipStream:
    """fuel-agent's GunzipStream, checking what it never did: the gzip trailer (CRC32,
    length) and the end of the input, so a truncated or corrupt image fails
    (WrongImageDataError) instead of leaving a short disk behind."""

    def __init__(self, stream: Any) -> None:
        self._source = stream
        self.stream = iter(stream)
        self._decoder = GzipDecoder()
        self._pieces: Iterator[Any] = iter(())
        self._ended = False

    def _reset(self) -> None:
        self._decoder.reset()
        self._pieces = iter(())

    def __iter__(self) -> "GunzipStream":
        return self

    def __next__(self) -> bytes:
        with _AgentErrors():
            while True:
                for piece in self._pieces:
                    if len(piece):
                        return bytes(piece)
                if self._ended:
                    raise StopIteration
                self._pieces = self._more()

    next = __next__

    def _more(self) -> Iterator[Any]:
        """Pieces of the next input chunk; at the input's end, the end-of-stream check."""
        try:
            chunk = next(self.stream)
        except StopIteration:
            self._ended = True
            return iter(self._decoder.finish())
        return self._decoder.feed(chunk)

    def target(self, filename: str = "/dev/null") -> None:
        """Decompress into `filename` and fsync it; a changed image (HttpUrl below)
        rewinds the file and the decoder and starts over."""
        out = _Target(filename)
        if isinstance(self._source, HttpUrl):
            self._source.on_restart(self._reset)
            self._source.on_restart(out.restart)
        _write_out(self, out)
