"""Store-level TiKV commands: health feedback and the store's safe timestamp.

``GetHealthFeedback`` reports this store's health as TiKV's ``HealthFeedbackAttacher`` does
(``src/server/service/kv.rs``): the store id, a sequence number that only grows (TiKV seeds it
with the Unix time when the server starts) and the raftstore slow score, 1 for a healthy store
(the mock never slows down unless a fault delays it). The same feedback rides on BatchCommands
responses at most once per second (TiKV's default ``health-feedback-interval``).

``GetStoreSafeTS`` answers with the store's safe (resolved) timestamp: data is applied the
moment it is written here, so it is the current time, held below the start ts of every
prewrite lock (pessimistic locks do not hold back TiKV's resolved ts).
"""

from __future__ import annotations

from typing import Any, cast

from tikv_proto import kvrpcpb_pb2

from tikv_mockstore.cluster import TSO_LOGICAL_BITS
from tikv_mockstore.handlers import StoreScope, handler
from tikv_mockstore.tikv_service import StoreScope as MockStoreScope

__all__ = ["get_health_feedback", "get_store_safe_ts", "store_safe_ts"]

_MAX_TS = (1 << 64) - 1
_PESSIMISTIC_LOCK = 5  # kvrpcpb.Op.PessimisticLock


@handler("GetHealthFeedback")
def get_health_feedback(
    scope: StoreScope, req: kvrpcpb_pb2.GetHealthFeedbackRequest
) -> kvrpcpb_pb2.GetHealthFeedbackResponse:
    """GetHealthFeedback: this store's feedback (no region checks, as TiKV)."""
    mock = cast(MockStoreScope, scope)
    return kvrpcpb_pb2.GetHealthFeedbackResponse(health_feedback=mock.health_feedback())


def store_safe_ts(scope: StoreScope) -> int:
    """The store's safe ts: now, below the oldest prewrite lock's start ts."""
    safe = scope.now_ms() << TSO_LOGICAL_BITS
    engine: Any = scope.engine
    if engine is not None:
        for lock in engine.scan_lock(_MAX_TS):
            if int(lock.lock_type) != _PESSIMISTIC_LOCK:
                safe = min(safe, lock.lock_version - 1)
    return max(safe, 0)


@handler("GetStoreSafeTS")
def get_store_safe_ts(
    scope: StoreScope, req: kvrpcpb_pb2.StoreSafeTSRequest
) -> kvrpcpb_pb2.StoreSafeTSResponse:
    """GetStoreSafeTS: the minimum safe ts of the store's regions (all applied at once here)."""
    return kvrpcpb_pb2.StoreSafeTSResponse(safe_ts=store_safe_ts(scope))
