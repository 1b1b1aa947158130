"""The PD-backed timestamp oracle (client-go ``oracle/oracles/pd.go``).

:class:`PDOracle` implements :class:`tikv_pd.oracle.Oracle` on a :class:`PDClient`:

* :meth:`PDOracle.get_timestamp` asks PD (through the client's batching TSO stream) and
  retries failures with ``pdRPC`` backoff within client-go's ``TsoMaxBackoff`` budget of
  15 s (``KVStore.getTimestampWithRetry`` in ``tikv/kv.go``).
* Every timestamp seen is remembered with its local arrival time
  (:class:`~tikv_pd.oracle.LowResolutionTimestampCache`). An owned background task
  refreshes it every ``Config.low_resolution_ts_update_interval`` (2 s,
  ``tikv/kv.go``), skipping the RPC when a fresher timestamp arrived meanwhile (the
  adaptive refresh of newer client-go).
* Low-resolution timestamps, stale timestamps (``now - prev_seconds`` estimated from the
  cached ts plus the local time elapsed since it arrived) and lock-expiry checks are
  answered from that cache without an RPC, as client-go does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tikv_pd.backoff import PD_RPC, TSO_MAX_BACKOFF, Backoffer
from tikv_pd.errors import ClientClosedError, PDError
from tikv_pd.oracle import LowResolutionTimestampCache
from tikv_pd.pd_client import PDClient

__all__ = ["PDOracle"]

logger = logging.getLogger("tikv.oracle")


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
        self._task: asyncio.Task[None] | None = None
        self._closed = False
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
        """Refresh period of the low-resolution timestamp, seconds."""
        return self._cache.update_interval

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

    # -- background refresh ------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cache.update_interval)
            if not self._cache.needs_refresh():
                continue  # a caller fetched a fresh timestamp meanwhile
            try:
                ts = await self._pd.get_timestamp()
            except ClientClosedError:
                return
            except Exception as exc:
                # PDError (or a bug): surfaces in last_refresh_error and the log; the
                # next tick retries.
                self.last_refresh_error = exc
                logger.warning("low-resolution timestamp refresh failed: %s", exc)
                continue
            self._cache.observe(ts)
            self.last_refresh_error = None
            self.refreshes += 1

    async def close(self) -> None:
        """Stop the refresh task; later calls raise ClientClosedError. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> PDOracle:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
