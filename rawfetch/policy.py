"""The retry policy: one immutable budget with history, backoff with jitter, Retry-After."""
from __future__ import annotations

import random
from typing import NamedTuple, Optional, Tuple

from .errors import FetchError, InvalidRequest
from .options import Options

MAX_RETRY_AFTER = 120.0       # s; a master node's Retry-After is honoured up to 2 min
                              # (urllib3 caps at 6 h; cloud-init's uncapped wait parks nodes)
PROGRESS_REFUND = 1 << 20     # an attempt that delivered >= 1 MiB new bytes is not charged
MAX_HISTORY = 64              # failures kept in full: fuel-agent retries for ever (retries 0),
                              # so history must not grow per attempt; counts are kept apart


class Attempt(NamedTuple):
    """One failed attempt, as kept in RetryPolicy.history (the last MAX_HISTORY of them)."""
    error: str          # error class name
    message: str
    offset: int         # bytes delivered when it failed
    elapsed: float      # seconds since the job started
    charged: bool       # whether it used up one of the retries
    progress: int = 0   # new bytes this attempt delivered before failing


class RetryPolicy:
    """Immutable retry budget with history (in the spirit of urllib3's Retry).

    `retries` failed attempts are allowed over the whole job; an attempt that moved the
    download forward by PROGRESS_REFUND bytes is recorded but not charged, so a long
    transfer over a link that drops now and then completes, while a server that answers
    and closes burns the budget at once. Backoff: full jitter, exponential from
    retry_delay, capped at retry_max_delay, counted over consecutive failures (and none
    right after an attempt that delivered bytes); a
    Retry-After is a floor the jitter is added to, so a rack told "1 s" does not return
    in one burst. jitter=False (deterministic sleeps) exists to measure herd effects.
    `history` holds only the last MAX_HISTORY failures; `failures`, `charged` and the
    backoff streak count the whole job, so a retry-for-ever job runs in flat memory.
    """

    __slots__ = ("retries", "retry_delay", "retry_max_delay", "history", "jitter", "_random",
                 "failures", "_charged", "_streak")

    def __init__(self, retries: int = 10, retry_delay: float = 1.0,
                 retry_max_delay: float = 30.0, history: Tuple[Attempt, ...] = (),
                 rng: Optional[random.Random] = None, jitter: bool = True) -> None:
        self.retries = retries
        self.retry_delay = retry_delay
        self.retry_max_delay = retry_max_delay
        self.history = tuple(history)[-MAX_HISTORY:]   # the most recent failures, oldest first
        self.jitter = jitter
        self._random = rng or random.Random()
        self.failures = len(history)                   # every failure recorded, kept or not
        self._charged = sum(1 for attempt in history if attempt.charged)
        self._streak = _trailing_charged(history)      # consecutive charged failures, newest last

    @classmethod
    def from_options(cls, options: Options) -> "RetryPolicy":
        return cls(options.retries, options.retry_delay, options.retry_max_delay,
                   jitter=options.retry_jitter)

    @property
    def charged(self) -> int:
        """Failures that used up a retry, over the whole job (not only those in history)."""
        return self._charged

    @property
    def exhausted(self) -> bool:
        return self.charged > self.retries

    def increment(self, error: FetchError, offset: int, elapsed: float,
                  progress: int) -> "RetryPolicy":
        """A new policy with this failure recorded (history keeps the last MAX_HISTORY)."""
        attempt = Attempt(type(error).__name__, str(error.message), offset, round(elapsed, 3),
                          progress < PROGRESS_REFUND, progress)
        later = RetryPolicy(self.retries, self.retry_delay, self.retry_max_delay,
                            self.history[-(MAX_HISTORY - 1):] + (attempt,), self._random,
                            self.jitter)
        later.failures = self.failures + 1
        later._charged = self._charged + attempt.charged
        later._streak = self._streak + 1 if attempt.charged else 0
        return later

    def backoff(self, retry_after: Optional[float] = None) -> float:
        """Seconds to sleep before the next attempt: none right after an attempt that
        delivered new bytes (a cut in a transfer is not a sign of an overloaded server;
        if the next attempt gets nothing, backoff resumes), else full jitter over the
        exponential ceiling of consecutive failures."""
        if retry_after is None and self.history and self.history[-1].progress > 0:
            return 0.0
        exponent = min(max(self._streak - 1, 0), 64)
        ceiling = min(self.retry_max_delay, self.retry_delay * (2 ** exponent))
        if retry_after is not None:
            floor = min(retry_after, MAX_RETRY_AFTER)
            return floor + (self._random.uniform(0, ceiling) if self.jitter else 0.0)
        return self._random.uniform(0, ceiling) if self.jitter else ceiling

    def __repr__(self) -> str:
        return "RetryPolicy(retries=%d, used=%d, failures=%d)" % (
            self.retries, self.charged, self.failures)


def _trailing_charged(history: Tuple[Attempt, ...]) -> int:
    """How many failures at the end of `history` were charged, one after another."""
    streak = 0
    for attempt in reversed(history):
        if not attempt.charged:
            break
        streak += 1
    return streak


def parse_checksum(checksum: Optional[str]) -> Optional[Tuple[str, str]]:
    """"ALGO:HEX" -> (algo, lowercase hex), validated against hashlib."""
    if checksum is None:
        return None
    algo, colon, hexdigest = str(checksum).partition(":")
    algo = algo.lower().replace("-", "")
    import hashlib  # lazily: it loads OpenSSL's libcrypto (+3.7 MiB RSS)
    try:
        size = hashlib.new(algo).digest_size
    except (ValueError, TypeError):
        raise InvalidRequest("unknown checksum algorithm %r" % algo) from None
    if not size:   # shake_128/shake_256: the length is the caller's choice, not the algorithm's
        raise InvalidRequest("checksum algorithm %r has no fixed digest length; use a fixed "
                             "one such as sha256" % algo)
    hexdigest = hexdigest.strip().lower()
    if not colon or len(hexdigest) != 2 * size or hexdigest.strip("0123456789abcdef"):
        raise InvalidRequest("checksum %r is not %s:<%d hex digits>" % (checksum, algo, 2 * size))
    return algo, hexdigest
