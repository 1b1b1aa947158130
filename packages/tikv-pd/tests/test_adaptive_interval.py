"""The adaptive low-resolution refresh interval (client-go TestAdaptiveUpdateTSInterval)."""

from __future__ import annotations

import pytest
from tikv_pd.oracle import (
    ADAPTIVE_BLOCK_RECOVER_THRESHOLD,
    ADAPTIVE_DELAY_BEFORE_RECOVERING,
    ADAPTIVE_MIN_INTERVAL,
    ADAPTIVE_RECOVER_PER_SECOND,
    ADAPTIVE_SHRINK_PRESERVE,
    AdaptiveUpdateInterval,
    compose_ts,
)

PD_NOW_MS = 1_700_000_000_000


def ts(before_now: float) -> int:
    """A timestamp ``before_now`` seconds before PD's "now"."""
    return compose_ts(PD_NOW_MS - round(before_now * 1000), 1)


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-3)


def test_constants_match_client_go() -> None:
    assert ADAPTIVE_MIN_INTERVAL == 0.5
    assert ADAPTIVE_SHRINK_PRESERVE == 0.1
    assert ADAPTIVE_BLOCK_RECOVER_THRESHOLD == 0.2
    assert ADAPTIVE_RECOVER_PER_SECOND == 0.02
    assert ADAPTIVE_DELAY_BEFORE_RECOVERING == 300.0


def test_adaptive_update_interval_follows_client_go() -> None:
    a = AdaptiveUpdateInterval(2.0, now=0.0)
    now = 2.0
    assert a.next_interval(now) == 2.0
    now += 2
    assert a.next_interval(now) == 2.0
    assert a.state == "normal"

    # A read with a staleness above the interval changes nothing.
    now += 1
    assert a.note_read(ts(3), ts(0), now) is None
    assert a.next_interval(now) == 2.0
    assert a.last_short_staleness_read is None

    # A read with a staleness under the interval shrinks it at once.
    now += 1
    assert a.note_read(ts(1), ts(0), now) == approx(1.0)
    expected = 1.0 - ADAPTIVE_SHRINK_PRESERVE
    assert a.next_interval(now, 1.0) == approx(expected)
    assert a.state == "adapting"
    assert a.last_short_staleness_read == now

    # Short-staleness reads keep coming: no new shrink (the interval serves them), but
    # they are remembered.
    now += ADAPTIVE_DELAY_BEFORE_RECOVERING / 2
    assert a.note_read(ts(1), ts(0), now) is None
    assert a.last_short_staleness_read == now

    # Less than the delay since the last such read: held.
    now += ADAPTIVE_DELAY_BEFORE_RECOVERING / 2 + 1
    a.last_tick = now - 1
    assert a.next_interval(now) == approx(expected)
    assert a.state == "adapting"

    # The delay has passed: recover by 20 ms per second since the last tick.
    now += ADAPTIVE_DELAY_BEFORE_RECOVERING / 2
    a.last_tick = now - 1
    expected += ADAPTIVE_RECOVER_PER_SECOND
    assert a.next_interval(now) == approx(expected)
    assert a.state == "recovering"
    a.last_tick = now
    now += 2
    # A staleness well above the interval neither shrinks nor blocks recovery.
    assert a.note_read(ts(expected + ADAPTIVE_BLOCK_RECOVER_THRESHOLD * 2), ts(0), now) is None
    expected += ADAPTIVE_RECOVER_PER_SECOND * 2
    assert a.next_interval(now) == approx(expected)
    assert a.state == "recovering"

    # A staleness close to the interval blocks recovery (adapting again, held).
    a.last_tick = now
    now += 1
    assert a.note_read(ts(expected + ADAPTIVE_BLOCK_RECOVER_THRESHOLD / 2), ts(0), now) is None
    assert a.next_interval(now) == approx(expected)
    assert a.state == "adapting"
    a.last_tick = now
    now += 1
    assert a.next_interval(now) == approx(expected)
    assert a.state == "adapting"

    # The delay passes again: recovery resumes and reaches the configured value.
    now += ADAPTIVE_DELAY_BEFORE_RECOVERING
    a.last_tick = now - 1
    expected += ADAPTIVE_RECOVER_PER_SECOND
    assert a.next_interval(now) == approx(expected)
    assert a.state == "recovering"
    while True:
        a.last_tick = now
        now += 1
        expected += ADAPTIVE_RECOVER_PER_SECOND
        if expected >= 2.0:
            break
        assert a.next_interval(now) == approx(expected)
        assert a.state == "recovering"
    assert a.next_interval(now) == 2.0
    assert a.state == "normal"

    # Not adapted: a configuration change applies at once.
    a.set_configured(1.0)
    assert a.interval == 1.0
    assert a.next_interval(now) == 1.0
    a.set_configured(2.0)
    assert a.interval == 2.0
    assert a.next_interval(now) == 2.0

    # Adapted: a longer (or not shorter) configuration waits for the recovery...
    now += 1
    assert a.note_read(ts(1), ts(0), now) == approx(1.0)
    expected = 1.0 - ADAPTIVE_SHRINK_PRESERVE
    assert a.next_interval(now, 1.0) == approx(expected)
    assert a.state == "adapting"
    a.set_configured(3.0)
    assert a.interval == approx(expected)
    assert a.next_interval(now) == approx(expected)
    a.set_configured(1.0)
    assert a.interval == approx(expected)
    assert a.next_interval(now) == approx(expected)
    # ...a shorter one applies at once.
    a.set_configured(0.8)
    assert a.interval == 0.8
    assert a.next_interval(now) == 0.8
    assert a.state == "normal"

    # Configured at or under the floor: never adapted.
    a.set_configured(ADAPTIVE_MIN_INTERVAL / 2)
    assert a.interval == ADAPTIVE_MIN_INTERVAL / 2
    assert a.next_interval(now) == ADAPTIVE_MIN_INTERVAL / 2
    assert a.state == "unadjustable"
    assert a.note_read(ts(0.1), ts(0), now) is None


def test_shrinking_has_a_floor_and_a_minimum_staleness() -> None:
    a = AdaptiveUpdateInterval(2.0, now=0.0)
    # A very short staleness shrinks to the 0.5 s floor, not below.
    assert a.note_read(ts(0.2), ts(0), 1.0) == approx(0.2)
    assert a.next_interval(1.0, 0.2) == ADAPTIVE_MIN_INTERVAL
    # PD time behind the read (clock drift): the request is still positive (1 ms).
    b = AdaptiveUpdateInterval(2.0, now=0.0)
    assert b.note_read(ts(0), ts(0.5), 1.0) == 0.001


def test_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="update interval must be > 0 seconds"):
        AdaptiveUpdateInterval(0, now=0.0)
    a = AdaptiveUpdateInterval(2.0, now=0.0)
    with pytest.raises(ValueError, match="must be > 0"):
        a.set_configured(-1)
    with pytest.raises(ValueError, match="must be > 0"):
        a.set_configured(float("inf"))
    with pytest.raises(TypeError, match="number of seconds"):
        a.set_configured("2s")  # type: ignore[arg-type]
    assert a.configured == 2.0
