"""Outlier ejection as a state machine over an injected clock, and the retry rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmgw.config import OutlierConfig, RetryBudgetConfig
from llmgw.errors import (
    FirstByteTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmgw.resilience.outlier import Outlier, may_eject
from llmgw.resilience.retry import failure_reason, retryable

CONFIG = OutlierConfig(consecutive_failures=3, base_ejection_s=5, max_ejection_s=12,
                       max_ejected_percent=50)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail(outlier: Outlier, times: int) -> list[bool]:
    return [outlier.failed() for _ in range(times)]


def test_consecutive_failures_call_for_an_ejection_and_an_answer_resets_the_streak() -> None:
    outlier = Outlier(CONFIG, Clock())
    assert fail(outlier, 2) == [False, False]
    assert outlier.answered() is False  # closed nothing: it was in
    assert fail(outlier, 3) == [False, False, True]
    assert (outlier.state, outlier.failures) == ("in", 3)


def test_ejection_backs_off_then_half_open_takes_one_trial_at_a_time() -> None:
    clock = Clock()
    outlier = Outlier(CONFIG, clock)
    fail(outlier, 3)
    assert outlier.eject() == 5
    assert (outlier.state, outlier.admits()) == ("ejected", False)
    assert outlier.status() == {"state": "ejected", "ejections": 1, "failures": 0,
                                "ejected_for_s": 5.0}
    clock.now += 5
    assert (outlier.state, outlier.admits()) == ("half_open", True)
    outlier.routed()  # the trial
    assert outlier.admits() is False
    outlier.released()  # it ended without a verdict (client gone): the next may try
    assert outlier.admits() is True
    outlier.routed()
    assert outlier.failed() is True  # one failure in half-open ejects again, for longer
    assert outlier.eject() == 10
    clock.now += 10
    outlier.routed()
    assert outlier.answered() is True
    assert (outlier.state, outlier.admits(), outlier.ejections) == ("in", True, 2)
    fail(outlier, 3)
    assert outlier.eject() == 12  # capped at max_ejection_s


def test_the_multiplier_forgets_after_max_ejection_s_in_rotation() -> None:
    clock = Clock()
    outlier = Outlier(CONFIG, clock)
    outlier.eject()
    clock.now += 5
    assert outlier.answered() is True
    clock.now += 12
    assert outlier.eject() == 5


def test_a_good_health_check_closes_half_open_but_not_ejected() -> None:
    clock = Clock()
    outlier = Outlier(CONFIG, clock)
    outlier.eject()
    assert outlier.probe_ok() is False
    assert outlier.state == "ejected"
    clock.now += 5
    assert outlier.probe_ok() is True
    assert outlier.state == "in"


@pytest.mark.parametrize(
    ("replicas", "already_out", "percent", "allowed"),
    [(1, 0, 50, False), (2, 0, 50, True), (2, 1, 50, False), (3, 1, 50, False),
     (4, 1, 50, True), (3, 2, 100, True), (3, 0, 0, False)],
    ids=["only-replica", "one-of-two", "second-of-two", "second-of-three",
         "second-of-four", "all-allowed", "disabled"],
)
def test_at_most_max_ejected_percent_are_out(replicas: int, already_out: int, percent: int,
                                             allowed: bool) -> None:
    outliers = [Outlier(CONFIG, Clock()) for _ in range(replicas)]
    for outlier in outliers[:already_out]:
        outlier.eject()
    assert may_eject(outliers, percent) is allowed


@pytest.mark.parametrize(
    ("error", "stream", "retry", "reason"),
    [
        (UpstreamUnreachable("refused"), False, True, "connect"),
        (UpstreamFailed("500"), False, True, "5xx"),
        (UpstreamDisconnected("reset"), True, True, "reset"),
        (UpstreamDisconnected("reset"), False, False, "reset"),
        (FirstByteTimeout("hung"), True, True, "timeout"),
        (UpstreamTimeout("deadline"), True, False, "timeout"),
        (UpstreamTimeout("deadline"), False, False, None),
        (UpstreamError("adapter slot taken"), False, True, None),
    ],
    ids=["connect-refused", "engine-5xx", "stream-reset-before-headers",
         "non-stream-reset-may-be-generating", "stream-first-byte-timeout",
         "stream-deadline", "non-stream-deadline", "other"],
)
def test_what_is_retried_and_what_counts_against_the_replica(
        error: UpstreamError, stream: bool, retry: bool, reason: str | None) -> None:
    assert (retryable(error, stream), failure_reason(error, stream)) == (retry, reason)


def test_config_defaults_and_a_cap_below_the_base_is_refused(tmp_path: Path) -> None:
    from llmgw.config import ConfigError, load_config

    path = tmp_path / "r.yaml"
    path.write_text("models:\n  - {name: a, url: 'http://x'}\n")
    cfg = load_config([path])
    assert (cfg.health.outlier, cfg.models[0].retry_budget, cfg.models[0].timeouts.first_byte_s
            ) == (OutlierConfig(), RetryBudgetConfig(), None)
    assert cfg.health.outlier.model_dump() == {
        "consecutive_failures": 5, "base_ejection_s": 5.0, "max_ejection_s": 60.0,
        "max_ejected_percent": 50}
    path.write_text("health: {outlier: {base_ejection_s: 30, max_ejection_s: 10}}\n"
                    "models:\n  - {name: a, url: 'http://x'}\n")
    with pytest.raises(ConfigError) as info:
        load_config([path])
    assert "health.outlier: max_ejection_s (10) is below base_ejection_s (30)" in str(info.value)
