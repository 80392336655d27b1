"""What ironic-python-agent's own code expects of its ImageDownload beyond the bytes:
its exception classes, and one job across its outer retry loop.

IPA 13 (extensions/standby.py) wraps each download in a loop of
image_download_connection_retries + 1 tries. Every try builds a new ImageDownload,
catches ImageDownloadError and ImageChecksumError (sleeps, tries again) and lets
ImageDownloadFatalError, ImageDownloadOutofSpaceError and anything else through to the
agent's API, where any other class becomes CommandExecutionError and loses its type. So
the adapter raises the agent's classes (imported lazily: without the agent, rawfetch's
own errors are raised unchanged), and keeps one retry budget and one deadline per image
download, keyed by the image and IPA's time_obj, so the loop's next try continues the
same job instead of starting a fresh budget. The table is in docs/ironic.md.
"""
from __future__ import annotations

import errno
import functools
import importlib
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, NoReturn, Optional, Tuple

from ..retry import Budget
from ..errors import (ChecksumMismatch, DeadlineExceeded, FetchError, HTTPStatusError,
                      InvalidRequest, LocalWriteError, ResourceChanged)
from ..options import Options
from ..resume import Stream, open_stream, with_checksum_file

AGENT_ERRORS = "ironic_python_agent.errors"
AGENT_CONFIG = "ironic_python_agent.config"
MAX_JOBS = 8   # the agent downloads one image at a time; room for a few abandoned jobs
REPLAY_NOTE = (" [an earlier try of this image download ended so; its retry budget and "
               "deadline are spent: no new request was made]")


@functools.lru_cache(maxsize=None)
def agent_module(name: str) -> Optional[Any]:
    """The agent's module when the agent is importable here, else None (looked up once)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# ------------------------------------------------------------------ exception classes
def agent_class_name(exc: FetchError) -> str:
    """The agent's exception class for one of rawfetch's (docs/ironic.md has the table)."""
    if isinstance(exc, HTTPStatusError) and 400 <= exc.status < 500:
        return "ImageDownloadFatalError"     # the agent's own rule for 4xx
    if isinstance(exc, InvalidRequest):
        return "ImageDownloadFatalError"     # the same image_info can never succeed
    if isinstance(exc, DeadlineExceeded):
        return "ImageDownloadTimeoutError"   # image_download_max_duration ran out
    if isinstance(exc, ChecksumMismatch):
        return "ImageChecksumError"
    if isinstance(exc, LocalWriteError) and getattr(exc, "errno", None) == errno.ENOSPC:
        return "ImageDownloadOutofSpaceError"
    return "ImageDownloadError"


def agent_error(exc: FetchError, image_id: str, note: str = "",
                checksums: Tuple[str, str, str] = ("", "", "")) -> BaseException:
    """The agent's exception for `exc`, rawfetch's class and message kept in its text;
    `exc` itself when the agent is not importable. `checksums` is (location, expected,
    got) for ImageChecksumError."""
    errors = agent_module(AGENT_ERRORS)
    if errors is None:
        return exc
    text = "rawfetch %s: %s%s" % (type(exc).__name__, exc, note)
    name = agent_class_name(exc)
    if name == "ImageChecksumError":
        error = errors.ImageChecksumError(image_id, *checksums)
        error.details = "%s (%s)" % (error.details, text)
        return error
    return getattr(errors, name)(image_id, text)


def raise_agent_error(exc: FetchError, image_id: str, note: str = "",
                      checksums: Tuple[str, str, str] = ("", "", "")) -> NoReturn:
    """Raise agent_error(...) from `exc` (the original stays as __cause__)."""
    error = agent_error(exc, image_id, note, checksums)
    if error is exc:
        raise exc
    raise error from exc


# ------------------------------------------------------------------ one job per image
class Job:
    """One image download across the agent's tries: one Budget (the retries count and the
    max_time deadline), the checksum file fetched once, and whether another try may make
    requests at all."""

    def __init__(self, urls: Tuple[str, ...], options: Options) -> None:
        self.urls = urls
        self.budget = Budget(options)
        self.options = options
        self.final: Optional[FetchError] = None   # set: every later try replays it
        self.clean_refetch_used = False
        self.stream: Optional[Stream] = None

    def open(self) -> Stream:
        """A new stream from byte 0 (the agent truncates its file at every try), inside
        the job's budget; a finished job raises its final error without a request."""
        if self.final is not None:
            raise self.final
        self.close()
        try:
            if self.options.checksum_url is not None:
                self.options = with_checksum_file(self.urls[0], self.options, self.budget)
            self.stream = open_stream(self.urls[0], self.options, self.urls[1:], self.budget)
        except FetchError as exc:
            self.ended(exc)
            raise
        return self.stream

    def ended(self, exc: FetchError, pieces: int = 0) -> None:
        """A try failed with `exc`: may the agent's next try make requests? Only to restart
        from zero where that is the cure and the budget allows: the object changed under
        a resume, or a mismatch on bytes assembled from several attempts (once, as
        rawfetch's download() does it). rawfetch raises nothing else before its budget is
        spent or the error is final."""
        if not self.budget.exhausted:
            if isinstance(exc, ResourceChanged):
                return
            if isinstance(exc, ChecksumMismatch) and pieces >= 2 \
                    and not self.clean_refetch_used:
                self.clean_refetch_used = True
                return
        self.final = exc

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


class JobRegistry:
    """The jobs of the agent's downloads in progress, keyed by image; bounded (the oldest
    goes), and a job leaves when its image is verified."""

    def __init__(self, limit: int = MAX_JOBS) -> None:
        self.limit = limit
        self._jobs: "OrderedDict[Hashable, Job]" = OrderedDict()
        self._lock = threading.Lock()   # the agent runs each command in a thread

    def get(self, key: Optional[Hashable], make: Callable[[], Job]) -> Job:
        """The job for `key`, made by `make()` when there is none (key None: never kept)."""
        if key is None:
            return make()
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                self._jobs.move_to_end(key)
                return job
        job = make()     # may connect (a checksum file): not under the lock
        with self._lock:
            self._jobs[key] = job
            while len(self._jobs) > self.limit:
                self._jobs.popitem(last=False)[1].close()
        return job

    def done(self, key: Optional[Hashable]) -> None:
        with self._lock:
            job = self._jobs.pop(key, None) if key is not None else None
        if job is not None:
            job.close()

    def __len__(self) -> int:
        return len(self._jobs)


JOBS = JobRegistry()
