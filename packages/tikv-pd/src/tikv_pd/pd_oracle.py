"""The PD-backed timestamp oracle (client-go ``oracle/oracles/pd.go``).

:class:`PDOracle` implements :class:`tikv_pd.oracle.Oracle` on a :class:`PDClient`:

* :meth:`PDOracle.get_timestamp` asks PD (through the client's batching TSO stream) and
  retries failures with ``pdRPC`` backoff within client-go's ``TsoMaxBackoff`` budget of
  15 s (``KVStore.getTimestampWithRetry`` in ``tikv/kv.go``).
* Every timestamp seen is remembered with its local arrival time
  (:class:`~tikv_pd.oracle.LowResolutionTimestampCache`). An owned background task
  refreshes it every ``Config.low_resolution_ts_update_interval`` (2 s,
  ``tikv/kv.go``), skipping the RPC when a fresher timestamp arrived meanwhile.
* Low-resolution timestamps, stale timestamps (``now - prev_seconds`` estimated from the
  cached ts plus the local time elapsed since it arrived) and lock-expiry checks are
  answered from that cache without an RPC, as client-go does.
* :meth:`PDOracle.validate_read_ts` refuses a read timestamp that PD has not issued yet
  (client-go ``ValidateReadTS``): a read ts above the cached one is checked against a
  fresh timestamp, fetched once for all concurrent callers and retried once.
* The refresh interval adapts to stale reads (client-go's adaptive update interval,
  :class:`~tikv_pd.oracle.AdaptiveUpdateInterval`): a stale read validated with a
  staleness at or under the interval makes the task refresh more often (never under
  0.5 s), until 5 minutes without such reads let it grow back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from tikv_pd.backoff import PD_RPC, TSO_MAX_BACKOFF, Backoffer
from tikv_pd.errors import ClientClosedError, FutureTSReadError, LatestStaleReadError, PDError
from tikv_pd.oracle import MAX_TIMESTAMP, AdaptiveUpdateInterval, LowResolutionTimestampCache
from tikv_pd.pd_client import PDClient

__all__ = ["PDOracle"]

logger = logging.getLogger("tikv.oracle")

_MAX_INT64 = 2**63 - 1


class PDOracle:
    """Timestamps from PD, with a cached low-resolution timestamp refreshed in background.

    Create it with :meth:`create` (it fetches a first timestamp, as client-go's
    ``NewPdOracle`` does, and starts the refresh task). The oracle does not own the PD
    client: :meth:`close` stops the refresh task only.

    Args:
        pd: The connected PD client.
        update_interval: Refresh period of the low-resolution timestamp in seconds
            (default ``pd.config.low_resolution_ts_update_interval``, 2 s).

    """

    def __init__(self, pd: PDClient, *, update_interval: float | None = None) -> None:
        if not isinstance(pd, PDClient):
            raise TypeError(f"pd must be a PDClient, got {type(pd).__name__}")
        interval = (
            pd.config.low_resolution_ts_update_interval
            if update_interval is None
            else update_interval
        )
        self._pd = pd
        self._cache = LowResolutionTimestampCache(interval)
        self._adaptive = AdaptiveUpdateInterval(interval, time.monotonic())
        # A stale read that needs a shorter interval tells the refresh task through this
        # one-slot queue; a full slot means a request is already pending (client-go's
        # buffered channel with a non-blocking send).
        self._shrink_requests: asyncio.Queue[float] = asyncio.Queue(maxsize=1)
        # The one fresh-timestamp fetch shared by concurrent validate_read_ts calls.
        self._validation_fetch: asyncio.Task[int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Fresh timestamps fetched to validate read timestamps (client-go counts these
        #: in ``validate_read_ts_from_pd_count``).
        self.validation_fetches = 0
        #: The error of the last failed background refresh (None after a success).
        self.last_refresh_error: BaseException | None = None
        #: How many background refreshes fetched a timestamp.
        self.refreshes = 0

    @classmethod
    async def create(cls, pd: PDClient, *, update_interval: float | None = None) -> PDOracle:
        """Build the oracle, fetch its first timestamp and start the refresh task.

        Raises:
            TypeError / ValueError: Bad arguments.
            PDError: No timestamp could be fetched within the TSO retry budget.

        """
        oracle = cls(pd, update_interval=update_interval)
        try:
            await oracle.get_timestamp()
        except BaseException:
            await oracle.close()
            raise
        oracle.start()
        return oracle

    def start(self) -> None:
        """Start the background refresh task (idempotent; needs a running loop)."""
        if self._closed:
            raise ClientClosedError("oracle")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._refresh_loop(), name="tikv-pd-oracle-refresh"
            )

    @property
    def pd(self) -> PDClient:
        """The PD client timestamps come from."""
        return self._pd

    @property
    def update_interval(self) -> float:
        """Refresh period of the low-resolution timestamp in use, seconds (may be adapted)."""
        return self._adaptive.interval

    @property
    def adaptive_interval(self) -> AdaptiveUpdateInterval:
        """The adaptive refresh interval (its state, configured and current values)."""
        return self._adaptive

    def set_update_interval(self, seconds: float) -> None:
        """Configure the refresh period (client-go ``SetLowResolutionTimestampUpdateInterval``).

        Takes effect by the next refresh. While the interval is adapted to stale reads, a
        longer value waits for the adaptation to recover; a shorter one applies at once.

        Raises:
            TypeError / ValueError: Not a positive number of seconds.

        """
        self._adaptive.set_configured(seconds)
        self._sync_interval()

    def _sync_interval(self) -> None:
        self._cache.update_interval = self._adaptive.interval

    @property
    def last_timestamp(self) -> int | None:
        """The newest timestamp this oracle has seen, or None."""
        return self._cache.get()

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("oracle")

    # -- Oracle ----------------------------------------------------------------------

    async def get_timestamp(self, *, backoffer: Backoffer | None = None) -> int:
        """Return a fresh timestamp from PD, retrying PD failures with backoff.

        Args:
            backoffer: Budget for the retries; default ``TSO_MAX_BACKOFF`` (15 s before
                the backoff weight), as client-go's ``getTimestampWithRetry``.

        Raises:
            tikv_pd.errors.TimeoutError: The retry budget ran out (its causes list the
                PD errors).
            ClientClosedError: The oracle or the PD client is closed.

        """
        self._check_open()
        bo = backoffer
        while True:
            try:
                ts = await self._pd.get_timestamp()
            except PDError as exc:
                if bo is None:
                    bo = Backoffer(TSO_MAX_BACKOFF, operation="get_timestamp")
                await bo.backoff(PD_RPC, exc)
                self._check_open()
                continue
            self._cache.observe(ts)
            return ts

    async def get_low_resolution_timestamp(self) -> int:
        """Return the cached timestamp (at most about one update interval old).

        Fetches one when nothing is cached yet.
        """
        self._check_open()
        cached = self._cache.get()
        if cached is not None:
            return cached
        return await self.get_timestamp()

    async def get_stale_timestamp(self, prev_seconds: float) -> int:
        """Return the timestamp of about ``prev_seconds`` ago (for stale reads).

        Estimated from the cached timestamp plus the local time elapsed since it
        arrived, minus ``prev_seconds`` (client-go ``getStaleTimestamp``); with nothing
        cached, a timestamp is fetched first.

        Raises:
            ValueError: ``prev_seconds`` is negative or reaches back before 1970.

        """
        self._check_open()
        if isinstance(prev_seconds, bool) or not isinstance(prev_seconds, int | float):
            raise TypeError(f"prev_seconds must be a number, got {type(prev_seconds).__name__}")
        try:
            return self._cache.stale_timestamp(prev_seconds)
        except LookupError:
            await self.get_timestamp()
            return self._cache.stale_timestamp(prev_seconds)

    async def get_min_timestamp(self) -> int:
        """Return PD's minimum timestamp across TSO keyspace groups (``GetMinTS``)."""
        self._check_open()
        return await self._pd.get_min_ts()

    async def get_external_timestamp(self) -> int:
        """Return the cluster's external timestamp (client-go ``GetExternalTimestamp``)."""
        self._check_open()
        return await self._pd.get_external_timestamp()

    async def set_external_timestamp(self, ts: int) -> None:
        """Set the cluster's external timestamp (client-go ``SetExternalTimestamp``)."""
        self._check_open()
        await self._pd.set_external_timestamp(ts)

    def is_expired(self, lock_ts: int, ttl_ms: int) -> bool:
        """Whether ``physical(lock_ts) + ttl_ms`` is at or before the cached timestamp.

        May answer "not yet" for up to one update interval after the true expiry
        (client-go accepts this false negative); with nothing cached it answers True.
        """
        return self._cache.is_expired(lock_ts, ttl_ms)

    def until_expired(self, lock_ts: int, ttl_ms: int) -> int:
        """Milliseconds from the cached timestamp until the lock expires (0 if no cache)."""
        return self._cache.until_expired(lock_ts, ttl_ms)

    # -- read timestamp validation ----------------------------------------------------

    async def validate_read_ts(self, read_ts: int, *, stale_read: bool = False) -> None:
        """Refuse a read timestamp that PD has not issued yet (client-go ``ValidateReadTS``).

        A read at a ts beyond PD's clock could miss writes that later commit below it, so
        its snapshot would not be repeatable. A ts at or below the cached timestamp passes
        at once. A newer one is checked against a fresh timestamp from PD — one fetch
        shared by every caller waiting at that moment — and, if still newer, once more
        against the next fresh timestamp (the shared fetch may have started before the
        caller's ts was issued by another client), then refused.

        ``MAX_TIMESTAMP`` (read the latest data) passes for a normal read and is refused
        for a stale read. For a stale read the staleness it asks for (PD's time minus
        ``read_ts``) also adapts the refresh interval (see :attr:`adaptive_interval`).

        Raises:
            TypeError: ``read_ts`` is not an int, ``stale_read`` not a bool.
            ValueError: ``read_ts`` is outside ``[0, 2**64)`` or in
                ``[2**63 - 1, 2**64 - 1)`` (a signed/unsigned mix-up client-go
                guards against).
            FutureTSReadError: The ts is newer than PD's newest (carries both).
            LatestStaleReadError: A stale read at ``MAX_TIMESTAMP``.
            PDError / TimeoutError: No fresh timestamp could be fetched.
            ClientClosedError: The oracle is closed.

        """
        if isinstance(read_ts, bool) or not isinstance(read_ts, int):
            raise TypeError(f"read_ts must be an int timestamp, got {type(read_ts).__name__}")
        if not isinstance(stale_read, bool):
            raise TypeError(f"stale_read must be a bool, got {type(stale_read).__name__}")
        if not 0 <= read_ts <= MAX_TIMESTAMP:
            raise ValueError(f"read_ts must be a 64-bit timestamp >= 0, got {read_ts}")
        if _MAX_INT64 <= read_ts < MAX_TIMESTAMP:
            raise ValueError(f"read_ts {read_ts} is in [2**63 - 1, 2**64 - 1): not a timestamp")
        self._check_open()
        if read_ts == MAX_TIMESTAMP:
            if stale_read:
                raise LatestStaleReadError()
            return
        retrying = False
        while True:
            cached = self._cache.get()
            if cached is None or read_ts > cached:
                current = await self._current_ts_for_validation()
                if stale_read and not retrying:
                    self._note_stale_read(read_ts, current)
                if read_ts > current:
                    if not retrying:
                        # The shared fetch may have been sent before read_ts was issued;
                        # the next one starts after this call began, so it is not.
                        retrying = True
                        continue
                    raise FutureTSReadError(read_ts, current)
            elif stale_read and not retrying:
                # PD's current time, estimated from the cache (no RPC).
                try:
                    estimated = self._cache.stale_timestamp(0)
                except (LookupError, ValueError) as exc:
                    logger.warning(
                        "cannot estimate the current ts for read ts %d: %s", read_ts, exc
                    )
                else:
                    self._note_stale_read(read_ts, estimated)
            return

    async def _current_ts_for_validation(self) -> int:
        fetch = self._validation_fetch
        if fetch is None:
            self.validation_fetches += 1
            fetch = asyncio.get_running_loop().create_task(
                self.get_timestamp(), name="tikv-pd-oracle-validate-ts"
            )
            self._validation_fetch = fetch
            fetch.add_done_callback(self._validation_fetch_done)
        # One caller cancelled must not cancel the fetch the others wait for.
        try:
            return await asyncio.shield(fetch)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if fetch.cancelled() and self._closed and (me is None or not me.cancelling()):
                raise ClientClosedError("oracle", when="while a read ts was validated") from None
            raise

    def _validation_fetch_done(self, fetch: asyncio.Task[int]) -> None:
        if self._validation_fetch is fetch:
            self._validation_fetch = None
        if not fetch.cancelled():
            fetch.exception()  # retrieved: every waiter may have been cancelled

    def _note_stale_read(self, read_ts: int, current_ts: int) -> None:
        staleness = self._adaptive.note_read(read_ts, current_ts, time.monotonic())
        if staleness is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._shrink_requests.put_nowait(staleness)

    # -- background refresh ------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._adaptive.interval
        next_tick = loop.time() + interval
        while True:
            try:
                async with asyncio.timeout(max(next_tick - loop.time(), 0.0)):
                    staleness = await self._shrink_requests.get()
            except TimeoutError:
                # A tick: decide the next interval first (recovery depends on the time
                # since the last tick), then refresh.
                interval = self._adaptive.next_interval(time.monotonic())
                self._sync_interval()
                if not await self._refresh():
                    return
                next_tick = loop.time() + interval
                continue
            # A stale read asked for a shorter interval: apply it now, and refresh at
            # once if the cache is already older than the new interval.
            now = time.monotonic()
            new = self._adaptive.next_interval(now, staleness)
            self._sync_interval()
            if new != interval:
                interval = new
                if now - self._adaptive.last_tick >= interval and not await self._refresh():
                    return
                next_tick = loop.time() + interval

    async def _refresh(self) -> bool:
        """One refresh; False when the PD client is closed (the loop ends)."""
        self._adaptive.last_tick = time.monotonic()
        if not self._cache.needs_refresh():
            return True  # a caller fetched a fresh timestamp meanwhile
        try:
            ts = await self._pd.get_timestamp()
        except ClientClosedError:
            return False
        except Exception as exc:
            # PDError (or a bug): surfaces in last_refresh_error and the log; the
            # next tick retries.
            self.last_refresh_error = exc
            logger.warning("low-resolution timestamp refresh failed: %s", exc)
            return True
        self._cache.observe(ts)
        self.last_refresh_error = None
        self.refreshes += 1
        return True

    async def close(self) -> None:
        """Stop the refresh task and any validation fetch. Idempotent.

        Later calls raise :class:`ClientClosedError`.
        """
        self._closed = True
        tasks = [t for t in (self._task, self._validation_fetch) if t is not None]
        self._task = self._validation_fetch = None
        for task in tasks:
            task.cancel()
        if tasks:
            # Their outcome (cancelled, or a fetch error nobody waits for) is not ours.
            await asyncio.wait(tasks)

    async def __aenter__(self) -> PDOracle:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
