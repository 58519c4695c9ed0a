"""Token buckets, quotas and OpenAI's rate-limit headers, on an injected clock."""

from __future__ import annotations

import pytest

from llmgw.config import Limits
from llmgw.tenancy.limits import Bucket, Quota, Refusal, duration, rate_headers


def test_a_bucket_holds_a_minute_and_refills_continuously() -> None:
    bucket = Bucket(60, now=0.0)
    bucket.take(60)
    assert (bucket.level, bucket.wait_s(1), bucket.reset_s()) == (0.0, 1.0, 60.0)
    bucket.refill(now=30.0)
    assert (bucket.level, bucket.wait_s(1), bucket.reset_s()) == (30.0, 0.0, 30.0)
    bucket.refill(now=1000.0)  # never above capacity
    assert bucket.level == 60.0


def test_a_bucket_owes_what_was_used_beyond_it_and_a_large_ask_waits_for_a_full_one() -> None:
    bucket = Bucket(120, now=0.0)
    bucket.take(150)  # a request used more than the whole bucket
    assert bucket.level == -30.0
    assert bucket.wait_s(10_000) == 75.0  # waits for a full bucket (120 units), not forever
    bucket.take(-500)  # money back never overfills
    assert bucket.level == 120.0


@pytest.mark.parametrize(
    ("limits", "charges", "tokens", "expected"),
    [
        (Limits(rpm=2), 2, 1, Refusal("requests", 30.0)),
        (Limits(rpm=2), 1, 1, None),
        (Limits(tpm=600), 1, 500, Refusal("tokens", 40.0)),  # 100 left, 400 more needed
        (Limits(max_concurrency=1), 1, 1, Refusal("concurrency", 1.0)),
        (Limits(rpm=10, tpm=1000, max_concurrency=5), 4, 100, None),
    ],
    ids=["rpm-spent", "rpm-left", "tpm-short", "concurrency-full", "all-within"],
)
def test_quota_refusals(limits: Limits, charges: int, tokens: int,
                        expected: Refusal | None) -> None:
    quota = Quota(limits, now=0.0)
    for _ in range(charges):
        quota.charge(tokens)
    assert quota.refusal(tokens) == expected


def test_settling_frees_the_slot_and_corrects_the_estimate() -> None:
    quota = Quota(Limits(tpm=1000, max_concurrency=1), now=0.0)
    quota.charge(100)
    assert quota.refusal(1) == Refusal("concurrency", 1.0)
    quota.settle(250)  # used 350 where 100 were estimated
    assert quota.in_flight == 0 and quota.tokens is not None and quota.tokens.level == 650.0
    quota.charge(100)
    quota.settle(-100)  # never reached an engine: the estimate comes back
    assert quota.tokens.level == 650.0


def test_new_limits_apply_to_the_usage_so_far() -> None:
    quota = Quota(Limits(rpm=10, tpm=1000, max_concurrency=3), now=0.0)
    for _ in range(2):
        quota.charge(300)  # 2 requests and 600 tokens used, both in flight
    quota.retune(Limits(rpm=4, max_concurrency=2), now=0.0)
    assert quota.requests is not None and quota.requests.level == 2.0  # 4 - the 2 used
    assert quota.tokens is None  # the token limit was lifted
    assert quota.refusal(1) == Refusal("concurrency", 1.0)  # the 2 in flight still count
    quota.settle(0)
    quota.retune(Limits(rpm=1, tpm=500), now=0.0)  # less than was used: owed
    assert quota.requests.level == -1.0 and quota.refusal(1) == Refusal("requests", 120.0)
    assert quota.tokens is not None and quota.tokens.level == 500.0  # a new limit starts full


def test_rate_headers_show_the_tightest_quota_per_kind() -> None:
    key = Quota(Limits(rpm=100, tpm=1000), now=0.0)
    model = Quota(Limits(rpm=10), now=0.0)
    for quota in (key, model):
        quota.charge(400)
    assert rate_headers([key, model]) == {
        "x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "24s",
    }
    assert rate_headers([Quota(Limits(max_concurrency=3), now=0.0)]) == {}


@pytest.mark.parametrize(("seconds", "text"),
                         [(0.0, "0ms"), (0.0171, "18ms"), (1.0, "1s"), (59.2, "1m0s"),
                          (360.0, "6m0s"), (61.5, "1m2s")])
def test_durations_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text
