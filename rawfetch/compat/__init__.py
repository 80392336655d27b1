"""Drop-in for fuel-agent's `HttpUrl` target (fuel_agent/utils/artifact.py).

fuel-agent switches with one import in artifact.py:

    from rawfetch.compat import HttpUrl

Its processors chain works unchanged: HttpUrl(url) is an iterator of data chunks (1 MiB,
its data_chunk_size), with `.url`, `.length`, `.processed_bytes` and `target(filename)`.
Unlike the original it resumes with Range + If-Range, never splices a changed file,
bounds every wait, and raises rawfetch's errors when it must give up.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..resume import open as open_stream

FUEL_DATA_CHUNK_SIZE = 1 << 20   # fuel-agent's CONF.data_chunk_size default


def fuel_options(http_max_retries: int = 30, http_retry_delay: float = 2.0,
                 http_request_timeout: float = 10.0) -> Dict[str, Any]:
    """Map fuel-agent's settings onto rawfetch's options (defaults are fuel-agent's).

    http_max_retries -> retries (now one budget for the whole image, not per reconnect);
    http_retry_delay -> retry_delay (exponential with jitter from there, capped at 10x);
    http_request_timeout -> connect_timeout and idle_timeout (and dns_timeout).
    """
    return dict(retries=http_max_retries, retry_delay=http_retry_delay,
                retry_max_delay=max(http_retry_delay * 10, http_retry_delay),
                connect_timeout=http_request_timeout, idle_timeout=http_request_timeout,
                dns_timeout=http_request_timeout)


class HttpUrl:
    """Iterator of fixed-size chunks of `url`; the first request happens here, like
    fuel-agent's constructor, so a bad URL or a 404 fails at construction."""

    def __init__(self, url: str, chunk_size: int = FUEL_DATA_CHUNK_SIZE,
                 **options: Any) -> None:
        self.url = str(url)
        self.chunk_size = chunk_size
        self.processed_bytes = 0
        self._done = False
        self._stream = open_stream(self.url, **options)
        self.length: Optional[int] = self._stream.size

    def __iter__(self) -> "HttpUrl":
        return self

    def __next__(self) -> bytes:
        """The next full chunk (the last may be shorter), like urllib3's raw.read(n)."""
        if self._done:
            raise StopIteration
        buffer = bytearray(self.chunk_size)
        view = memoryview(buffer)
        filled = 0
        while filled < self.chunk_size:
            got = self._stream.readinto(view[filled:])
            if not got:
                break
            filled += got
        if not filled:
            self._done = True
            self._stream.close()
            raise StopIteration
        self.processed_bytes += filled
        del view
        del buffer[filled:]
        return bytes(buffer)

    next = __next__  # fuel-agent's Python 2 style Target API

    def target(self, filename: str = "/dev/null") -> None:
        """Write every chunk to `filename` and fsync it, as fuel-agent's Target does."""
        import os
        with open(filename, "wb") as handle:
            for chunk in self:
                handle.write(chunk)
            handle.flush()
            try:
                os.fsync(handle.fileno())
            except OSError:  # cleanup-grade: /dev/null and pipes cannot be fsynced
                pass

    def close(self) -> None:
        self._stream.close()
