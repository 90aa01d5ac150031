"""The token bucket, the 429 pause and the backoff interval (docs/design.md, "The model")."""

from __future__ import annotations

import math

import pytest

from exporter.polling.store import TokenBucket, pause_after_429, poll_interval


@pytest.mark.parametrize(
    ("retry_after", "pause"),
    [
        *((None, 1.0), (math.nan, 1.0), (-5.0, 1.0), (0.0, 1.0), (0.4, 1.0), (3.0, 3.0)),
        *((600.0, 600.0), (601.0, 600.0), (1e9, 600.0), (math.inf, 600.0)),
    ],
)
def test_pause_after_429_is_clamped(retry_after: float | None, pause: float) -> None:
    assert pause_after_429(retry_after) == pause


@pytest.mark.parametrize(
    ("minimum", "failures", "interval"),
    [
        (10.0, 0, 10.0),
        (10.0, 1, 10.0),
        (10.0, 2, 20.0),
        (10.0, 5, 160.0),
        (10.0, 6, 300.0),  # 320 capped at 5 minutes
        (10.0, 10_000, 300.0),  # no overflow after days of failures
        (600.0, 3, 600.0),  # min_poll_interval longer than 5 minutes: the cap
        (0.0, 7, 0.0),
    ],
)
def test_poll_interval_backs_off(minimum: float, failures: int, interval: float) -> None:
    assert poll_interval(minimum, failures) == interval


def test_bucket_allows_burst_then_rate_and_nothing_while_paused() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert bucket.allowance(0.0) == 3
    for _ in range(3):
        assert bucket.next_start(0.0) == 0.0
        bucket.take()
    assert bucket.short_reason(0.0) == "rate_limited"
    assert bucket.next_start(0.0) == pytest.approx(0.5)
    assert bucket.allowance(1.0) == 2
    bucket.pause(1.0, 5.0)
    assert bucket.allowance(2.0) == 0
    assert bucket.short_reason(2.0) == "backoff"
    assert bucket.next_start(2.0) == 6.0
    assert bucket.allowance(100.0) == 3  # never more than the burst
    bucket.configure(rate=1.0, burst=1)
    assert bucket.allowance(100.0) == 1


def test_a_later_shorter_pause_does_not_shorten_a_longer_one() -> None:
    """Two 429s of one store: ``Retry-After: 60``, then one of 2 s from a request in flight."""
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    bucket.pause(0.0, 60.0)
    bucket.pause(10.0, 2.0)  # ends at 12: the pause to 60 stays
    assert bucket.paused(20.0)
    assert bucket.allowance(20.0) == 0
    assert bucket.next_start(20.0) == 60.0
    bucket.pause(59.0, 5.0)  # a longer one ending later does extend it
    assert bucket.next_start(60.0) == 64.0
    assert not bucket.paused(64.0)


@pytest.mark.parametrize(("rate", "elapsed"), [(2.0, 0.25), (4.0, 0.1), (0.5, 1.5)])
def test_wait_after_a_partial_refill_is_for_the_missing_fraction(
    rate: float, elapsed: float
) -> None:
    bucket = TokenBucket(rate=rate, burst=1, now=0.0)
    bucket.take()  # empty at 0
    tokens = rate * elapsed  # earned by ``elapsed``: a fraction of a token
    assert 0 < tokens < 1
    start = bucket.next_start(elapsed)
    assert start == pytest.approx(elapsed + (1 - tokens) / rate)
    assert start == pytest.approx(1 / rate)  # one token a 1/rate after the empty bucket
    assert bucket.short_reason(elapsed) == "rate_limited"
    assert bucket.next_start(start) == pytest.approx(start)  # and then it can start


def test_one_whole_token_is_no_shortage() -> None:
    bucket = TokenBucket(rate=2.0, burst=1, now=0.0)
    bucket.take()
    assert bucket.short_reason(0.25) == "rate_limited"  # half a token
    assert bucket.short_reason(0.5) is None  # exactly one: a request may start
    assert bucket.next_start(0.5) == 0.5
