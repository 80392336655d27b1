"""The retry policy's memory bound: a retry-for-ever job (fuel-agent's http_max_retries=0)
keeps the last MAX_HISTORY failures in full and counts every one."""
from __future__ import annotations

import hashlib

import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch.compat.fuel import RETRY_FOREVER, fuel_options
from rawfetch.retry import MAX_HISTORY, PROGRESS_REFUND, RetryPolicy
from tests.faultserver import actions as A

pytestmark = pytest.mark.timeout(120)


def drive(policy: RetryPolicy, failures: int, refund_every: int = 0) -> RetryPolicy:
    """`failures` failed attempts; every refund_every-th one delivered >= 1 MiB."""
    for n in range(1, failures + 1):
        progress = PROGRESS_REFUND if refund_every and n % refund_every == 0 else 0
        policy = policy.increment(E.ReceiveError("reset #%d" % n), n, float(n), progress)
    return policy


def test_history_stays_bounded_and_counts_stay_whole():
    policy = drive(RetryPolicy(retries=RETRY_FOREVER, retry_delay=0.001), 10 * MAX_HISTORY,
                   refund_every=10)
    assert len(policy.history) == MAX_HISTORY
    assert policy.failures == 10 * MAX_HISTORY
    assert policy.charged == 10 * MAX_HISTORY - MAX_HISTORY     # one in ten refunded
    assert [a.message for a in policy.history] == [
        "reset #%d" % n for n in range(9 * MAX_HISTORY + 1, 10 * MAX_HISTORY + 1)]
    assert not policy.exhausted and "failures=%d" % (10 * MAX_HISTORY) in repr(policy)


def test_exhaustion_is_counted_past_the_kept_history():
    retries = 3 * MAX_HISTORY
    almost = drive(RetryPolicy(retries=retries), retries)
    assert not almost.exhausted and len(almost.history) == MAX_HISTORY
    assert drive(almost, 1).exhausted


def test_backoff_reaches_its_cap_after_a_streak_longer_than_the_history():
    policy = drive(RetryPolicy(retry_delay=0.5, retry_max_delay=7.0, jitter=False),
                   MAX_HISTORY + 10)
    assert policy.backoff() == 7.0
    assert drive(policy, 1, refund_every=1).backoff() == 0.0     # progress: at once


def test_retry_for_ever_download_past_the_kept_history(server, body, tmp_path):
    """fuel-agent's retry for ever through the fault server: more failed attempts than
    MAX_HISTORY, then the whole file; the result counts them all, keeps the last ones."""
    cuts = MAX_HISTORY + 6
    server.script([A.status(503, {"Retry-After": "0"})] * cuts + [A.normal()])
    options = fuel_options(http_max_retries=0, http_retry_delay=0.001, http_request_timeout=5)
    target = tmp_path / "img"
    result = rawfetch.download(server.url("/img"), target, **options)
    assert options["retries"] == RETRY_FOREVER
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(body).digest()
    assert result.attempts == cuts + 1 == len(server.requests)
    assert len(result.history) == MAX_HISTORY
    assert {a.error for a in result.history} == {"HTTPStatusError"}


def test_gave_up_message_counts_every_attempt(server, tmp_path):
    retries = MAX_HISTORY + 4
    server.script([A.status(503, {"Retry-After": "0"})] * (retries + 1) + [A.normal()])
    with pytest.raises(E.HTTPStatusError) as caught:
        rawfetch.download(server.url("/img"), tmp_path / "img", retries=retries,
                          retry_delay=0.001, retry_max_delay=0.002)
    assert "gave up after %d attempts" % (retries + 1) in caught.value.message
    assert len(server.requests) == retries + 1 and not (tmp_path / "img").exists()
