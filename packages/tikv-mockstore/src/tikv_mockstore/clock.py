"""The cluster's settable clock.

Every time-dependent behaviour of the mock cluster reads this clock: the physical part of PD
timestamps (so lock TTLs, which TiKV compares against TSO physical time, expire when a test
moves the clock), raw-KV TTL expiry (TiKV compares ``expire_ts`` with the current Unix time in
seconds) and PD service safepoint TTLs. It follows the wall clock plus an offset that tests move
with :meth:`Clock.advance` or :meth:`Clock.set`; :meth:`Clock.freeze` stops it entirely.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Clock"]


class Clock:
    """A thread-safe millisecond clock: the wall clock plus a settable offset, or frozen."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        # (offset_ms, frozen_at), replaced whole under the lock so that now_ms() — read by
        # every request — needs no lock: one attribute read sees a consistent pair.
        self._state: tuple[int, int | None] = (0, None)

    def now_ms(self) -> int:
        """The current time in milliseconds since the Unix epoch."""
        offset, frozen_at = self._state
        if frozen_at is not None:
            return frozen_at
        return time.time_ns() // 1_000_000 + offset

    def now_s(self) -> int:
        """The current time in whole seconds since the Unix epoch (TiKV's raw TTL unit)."""
        return self.now_ms() // 1000

    def advance(self, ms: int) -> int:
        """Move the clock forward by ``ms`` milliseconds and return the new time."""
        if not isinstance(ms, int) or isinstance(ms, bool):
            raise TypeError(f"ms must be an int, not {type(ms).__name__}")
        if ms < 0:
            raise ValueError(f"ms must be >= 0 (the clock only moves forward), got {ms}")
        with self._mu:
            offset, frozen_at = self._state
            if frozen_at is not None:
                self._state = (offset, frozen_at + ms)
            else:
                self._state = (offset + ms, None)
        return self.now_ms()

    def set(self, now_ms: int) -> None:
        """Set the current time to ``now_ms``; the clock keeps running from there unless frozen.

        Setting it backwards is allowed (to test clock skew); PD timestamps stay strictly
        monotonic regardless, as PD's do.
        """
        if not isinstance(now_ms, int) or isinstance(now_ms, bool):
            raise TypeError(f"now_ms must be an int, not {type(now_ms).__name__}")
        if now_ms < 0:
            raise ValueError(f"now_ms must be >= 0, got {now_ms}")
        with self._mu:
            offset, frozen_at = self._state
            if frozen_at is not None:
                self._state = (offset, now_ms)
            else:
                self._state = (now_ms - time.time_ns() // 1_000_000, None)

    def freeze(self) -> None:
        """Stop the clock at its current time (until :meth:`unfreeze`)."""
        with self._mu:
            self._state = (self._state[0], self.now_ms())

    def unfreeze(self) -> None:
        """Let a frozen clock run again from the time it shows."""
        with self._mu:
            frozen_at = self._state[1]
            if frozen_at is None:
                return
            self._state = (frozen_at - time.time_ns() // 1_000_000, None)

    @property
    def frozen(self) -> bool:
        """Whether the clock is frozen."""
        return self._state[1] is not None
