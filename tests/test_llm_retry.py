"""The retry rules as pure functions: backoff formula, Retry-After parsing, which statuses."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from nbagent.llm.retry import RetryPolicy, backoff_delay, parse_retry_after, should_retry_status


@pytest.mark.parametrize(
    ("retry", "expected"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (30, 8.0)]
)
def test_backoff_doubles_from_half_a_second_and_caps_at_8(retry: int, expected: float) -> None:
    assert backoff_delay(retry, rand=lambda: 0.0) == expected  # no jitter
    assert backoff_delay(retry, rand=lambda: 1.0) == pytest.approx(expected * 0.75)  # most jitter


def test_backoff_jitter_stays_within_a_quarter() -> None:
    delays = {backoff_delay(1) for _ in range(200)}
    assert all(0.75 <= d <= 1.0 for d in delays)
    assert len(delays) > 100  # really random


def test_backoff_base_and_cap_are_configurable() -> None:
    assert backoff_delay(3, base=0.01, cap=8.0, rand=lambda: 0.0) == pytest.approx(0.08)
    assert backoff_delay(10, base=1.0, cap=2.0, rand=lambda: 0.0) == 2.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "whenever"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers)) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) == pytest.approx(42)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_retryable_statuses(status: int) -> None:
    assert should_retry_status(status, httpx.Headers())


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_statuses_that_fail_at_once(status: int) -> None:
    assert not should_retry_status(status, httpx.Headers())


def test_x_should_retry_header_wins() -> None:
    assert should_retry_status(400, httpx.Headers({"x-should-retry": "true"}))
    assert not should_retry_status(503, httpx.Headers({"x-should-retry": "false"}))


def test_policy_prefers_a_positive_retry_after_and_knows_its_cap() -> None:
    policy = RetryPolicy(max_retries=2, base_delay=0.5, max_retry_wait=60)
    assert policy.delay(0, 3.0) == 3.0
    assert 0.375 <= policy.delay(0, 0.0) <= 0.5  # zero or negative: plain backoff
    assert 0.375 <= policy.delay(0, -5.0) <= 0.5
    assert not policy.too_long(60)
    assert policy.too_long(61)
    assert not policy.too_long(None)


def test_policy_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
