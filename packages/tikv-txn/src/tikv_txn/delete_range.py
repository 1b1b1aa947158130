"""Delete a range of the transactional key space (client-go ``rangetask.DeleteRangeTask``).

``KvDeleteRange`` removes *every* version and lock of the keys in a range at once — no
MVCC, no transaction: readers at any ts stop seeing the data, and a transaction that
wrote there concurrently may lose its writes. TiDB uses it to drop tables whose data no
snapshot can read any more (after the GC safepoint passed them); TiKV answers it per
region, so the range is walked region by region through
:class:`tikv_pd.rangetask.RangeTaskRunner` (client-go ``DeleteRangeTask.Execute``):
each part goes through the shared request pipeline (timeout ``read_timeout_medium``,
client-go ``ReadTimeoutMedium``; 100 s of backoff per region, client-go
``deleteRangeOneRegionMaxBackoff``), which re-shards a part whose region split.

A *notify-only* task (client-go ``NewNotifyDeleteRangeTask``) sends the same requests
with ``notify_only`` set: TiKV deletes nothing but replicates the request through Raft
so its observers learn about the range, before an ``UnsafeDestroyRange``.

:func:`unsafe_destroy_range` (client-go ``KVStore.UnsafeDestroyRange``, ``tikv/gc.go``)
goes below Raft: every store (tombstones and TiFlash left out) wipes the range from its
engine directly, all at once, with a 5-minute deadline. Nothing may read or write the
range afterwards; calling it again on the same range is harmless.

:class:`DeleteRangeTask` is resumable: when a run fails it remembers where it stopped
(:attr:`DeleteRangeTask.resume_key`), and :meth:`DeleteRangeTask.execute` called again
continues from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tikv_pd.backoff import DELETE_RANGE_ONE_REGION_MAX_BACKOFF, Backoffer
from tikv_pd.errors import TiKVError
from tikv_pd.interceptor import send_to_store
from tikv_pd.rangetask import (
    DEFAULT_RANGE_TASK_CONCURRENCY,
    RangeTaskProgress,
    RangeTaskRunner,
    TaskStat,
)
from tikv_pd.region_cache import Region, StoreState
from tikv_proto import kvrpcpb_pb2

from tikv_txn._validate import check_range

if TYPE_CHECKING:
    from tikv_pd.pd_client import PDClient

    from tikv_txn._runtime import TxnRuntime

__all__ = ["UNSAFE_DESTROY_RANGE_TIMEOUT", "DeleteRangeTask", "unsafe_destroy_range"]

#: Deadline of one store's UnsafeDestroyRange, seconds (client-go ``unsafeDestroyRangeTimeout``).
UNSAFE_DESTROY_RANGE_TIMEOUT = 300.0


class DeleteRangeTask:
    """Deletes every key of ``[start, end)`` (user keys), region by region.

    Args:
        runtime: The client's runtime.
        start: First key (inclusive; ``b""``: the first key).
        end: End key (exclusive; ``b""`` or ``None``: no bound).
        notify_only: Send notify-only requests (TiKV deletes nothing).
        concurrency: Regions worked on at once.
        on_progress: Called after each region with the task's progress (user keys).

    Raises:
        TypeError / ValueError: Bad bounds or concurrency.

    """

    def __init__(
        self,
        runtime: TxnRuntime,
        start: bytes,
        end: bytes | None = None,
        *,
        notify_only: bool = False,
        concurrency: int = DEFAULT_RANGE_TASK_CONCURRENCY,
        on_progress: Callable[[RangeTaskProgress], None] | None = None,
    ) -> None:
        lo, hi = check_range(start, end)
        if not isinstance(notify_only, bool):
            raise TypeError(f"notify_only must be a bool, got {type(notify_only).__name__}")
        self._rt = runtime
        self._start = lo
        self._end = hi
        self._enc_start, self._enc_end = runtime.codec.encode_range(lo, hi)
        self._resume: bytes | None = self._enc_start
        self._notify_only = notify_only
        self._user_progress = on_progress
        self._completed = 0
        self._failed = 0
        self._running = False
        self._options = runtime.request_options(timeout=runtime.config.read_timeout_medium)
        name = "delete-range-notify" if notify_only else "delete-range"
        self._runner = RangeTaskRunner(
            name,
            runtime.sender.locator,
            self._send,
            concurrency=concurrency,
            on_progress=self._progress if on_progress is not None else None,
        )

    # -- results -----------------------------------------------------------------------

    @property
    def notify_only(self) -> bool:
        """Whether the requests are notify-only."""
        return self._notify_only

    @property
    def completed_regions(self) -> int:
        """Regions deleted so far, over every run (client-go ``CompletedRegions``)."""
        running = self._runner.completed_regions if self._running else 0
        return self._completed + running

    @property
    def finished(self) -> bool:
        """Whether the whole range was deleted."""
        return self._resume is None

    @property
    def resume_key(self) -> bytes | None:
        """The user key the next :meth:`execute` starts from (``None``: finished)."""
        if self._resume is None:
            return None
        return self._decode(self._resume)

    def _decode(self, key: bytes) -> bytes:
        if key == self._enc_start:
            return self._start
        if key == self._enc_end:
            return self._end
        return self._rt.codec.decode_key(key)

    def _progress(self, progress: RangeTaskProgress) -> None:
        assert self._user_progress is not None
        self._user_progress(
            RangeTaskProgress(
                progress.name,
                self._start,
                self._end,
                self._decode(progress.done_until),
                self._completed + progress.completed_regions,
                self._failed + progress.failed_regions,
                progress.finished,
            )
        )

    # -- running -----------------------------------------------------------------------

    async def _send(self, region: Region, start: bytes, end: bytes) -> TaskStat:
        notify_only = self._notify_only

        def build(s: bytes, e: bytes) -> kvrpcpb_pb2.DeleteRangeRequest:
            return kvrpcpb_pb2.DeleteRangeRequest(start_key=s, end_key=e, notify_only=notify_only)

        bo = Backoffer(DELETE_RANGE_ONE_REGION_MAX_BACKOFF, operation=self._runner.name)
        responses: list[Any] = await self._rt.sender.call_range(
            "DeleteRange", start, end, build, bo=bo, options=self._options
        )
        for resp in responses:
            if resp.error:
                raise TiKVError(f"delete range failed: {resp.error}")
        return TaskStat(completed_regions=len(responses))

    async def execute(self) -> int:
        """Delete the range (or its rest, after a failed run); return the regions done.

        The count is over every run of this task. Calling it after the task finished
        does nothing.

        Raises:
            tikv_pd.errors.TiKVError: A region kept failing (its budget ran out, a store
                error, TiKV refused); :attr:`resume_key` says where the next call starts.
            tikv_pd.errors.ClientClosedError: The client was closed.

        """
        self._rt.check_open()
        if self._resume is None:
            return self.completed_regions
        self._running = True
        try:
            await self._runner.run(self._resume, self._enc_end)
        finally:
            self._running = False
            self._resume = self._runner.resume_key
            self._completed += self._runner.completed_regions
            self._failed += self._runner.failed_regions
        return self._completed


async def unsafe_destroy_range(runtime: TxnRuntime, pd: PDClient, start: bytes, end: bytes) -> int:
    """Wipe ``[start, end)`` (user keys) from every store's engine, bypassing Raft.

    client-go ``KVStore.UnsafeDestroyRange``: the store list is read from PD each time;
    every store that is not a tombstone or TiFlash gets the request concurrently.

    Returns:
        How many stores destroyed the range.

    Raises:
        TypeError / ValueError: Bad bounds (both must be non-empty: TiKV needs them).
        tikv_pd.errors.TiKVError: Some stores failed (all were tried; the message names
            each failure). Calling again is safe.
        tikv_pd.errors.PDError: The store list could not be read.

    """
    lo, hi = check_range(start, end)
    if not lo or not hi:
        raise ValueError("unsafe_destroy_range needs a non-empty start and end")
    runtime.check_open()
    enc_lo, enc_hi = runtime.codec.encode_range(lo, hi)
    stores = [
        s
        for s in await pd.get_all_stores()
        if s.state is not StoreState.TOMBSTONE and not s.is_tiflash
    ]
    transport = runtime.sender.transport
    api_version = runtime.codec.api_version
    store_ids = {s.address: s.id for s in stores}

    async def destroy(address: str) -> str | None:
        request = kvrpcpb_pb2.UnsafeDestroyRangeRequest(start_key=enc_lo, end_key=enc_hi)
        request.context.api_version = api_version  # type: ignore[assignment]
        try:
            resp = await send_to_store(
                transport.send,
                address,
                "UnsafeDestroyRange",
                request,
                UNSAFE_DESTROY_RANGE_TIMEOUT,
                store_id=store_ids[address],
                interceptor=runtime.interceptor,
            )
        except TiKVError as exc:
            return str(exc)
        return resp.error or None

    results = await asyncio.gather(*(destroy(s.address) for s in stores))
    failures = [
        f"store {s.id} ({s.address}): {err}" for s, err in zip(stores, results, strict=True) if err
    ]
    if failures:
        raise TiKVError("unsafe destroy range failed on " + "; ".join(failures))
    return len(stores)
