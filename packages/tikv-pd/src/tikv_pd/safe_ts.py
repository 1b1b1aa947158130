"""Stores' safe timestamps: the newest ts a stale read can be served at anywhere.

Each TiKV store answers ``GetStoreSafeTS`` with the smallest safe (resolved) ts of its
regions in a key range; a stale read at or below a replica's safe ts is served by that
replica, above it the replica answers ``DataIsNotReady``. client-go keeps every TiKV store's
value (``KVStore.updateSafeTS``, refreshed every 2 s, ``Config.safe_ts_update_interval``)
and derives the *min safe ts* (``updateMinSafeTS``): the smallest non-zero value over the
stores, 0 when a store's value is unknown, when there are no stores, or when every value is
0. A stale read at the min safe ts is served by whichever replica it reaches.

:class:`SafeTsCache` holds the values and the rule; :func:`fetch_store_safe_ts` asks the
stores (TiKV only: TiFlash and tombstones are skipped, as client-go's
``GetStoresByType(TiKV)``). Here the values are fetched on demand (no background poller);
a failed store keeps no value, which makes the min safe ts 0 until it answers again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from tikv_proto import kvrpcpb_pb2

from tikv_pd.region_cache import Store, StoreState

__all__ = ["SafeTsCache", "StoreLister", "fetch_store_safe_ts"]


class StoreLister(Protocol):
    """Where the stores come from (:class:`tikv_pd.pd_client.PDClient`)."""

    async def get_all_stores(self, *, exclude_tombstone: bool = True) -> list[Store]:
        """Every store PD knows, without tombstones."""
        ...


class SafeTsCache:
    """Safe ts per store and client-go's min-safe-ts rule (not thread-safe)."""

    __slots__ = ("_by_store",)

    def __init__(self) -> None:
        self._by_store: dict[int, int] = {}

    def set(self, store_id: int, safe_ts: int) -> None:
        """Record ``store_id``'s safe ts."""
        self._by_store[store_id] = safe_ts

    def forget(self, store_id: int) -> None:
        """Drop ``store_id``'s value (it failed to answer)."""
        self._by_store.pop(store_id, None)

    def get(self, store_id: int) -> int:
        """``store_id``'s last known safe ts (0 when unknown, as client-go)."""
        return self._by_store.get(store_id, 0)

    def min_safe_ts(self, store_ids: Iterable[int]) -> int:
        """The min safe ts over ``store_ids`` (client-go ``updateMinSafeTS``).

        Zero values are skipped; an unknown store makes it 0; no stores, or only zeros,
        give 0.
        """
        best: int | None = None
        for sid in store_ids:
            value = self._by_store.get(sid)
            if value is None:
                return 0
            if value and (best is None or value < best):
                best = value
        return best or 0


async def fetch_store_safe_ts(
    pd: StoreLister,
    transport: Any,
    cache: SafeTsCache,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - the RPC deadline
) -> list[int]:
    """Ask every TiKV store for its safe ts (whole key space) and record the answers.

    Args:
        pd: Lists the stores.
        transport: Sends ``GetStoreSafeTS`` (:class:`tikv_pd.transport.Transport`).
        cache: Where the values go; a store that fails is forgotten.
        timeout: Seconds per request (``None``: the transport's default).

    Returns:
        The ids of the TiKV stores asked (pass them to :meth:`SafeTsCache.min_safe_ts`).

    """
    stores = [
        s
        for s in await pd.get_all_stores(exclude_tombstone=True)
        if s.state is not StoreState.TOMBSTONE and not s.is_tiflash and s.address
    ]

    async def ask(store: Store) -> None:
        # An empty key range asks for every region of the store (client-go sends the same).
        request = kvrpcpb_pb2.StoreSafeTSRequest(key_range=kvrpcpb_pb2.KeyRange())
        try:
            resp = await transport.send(store.address, "GetStoreSafeTS", request, timeout)
        except asyncio.CancelledError:
            raise
        except Exception:
            cache.forget(store.id)
            return
        cache.set(store.id, resp.safe_ts)

    await asyncio.gather(*(ask(s) for s in stores))
    return [s.id for s in stores]
