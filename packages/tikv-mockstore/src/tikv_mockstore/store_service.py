"""Store-level TiKV commands: health feedback and the store's safe timestamp.

``GetHealthFeedback`` reports this store's health as TiKV's ``HealthFeedbackAttacher`` does
(``src/server/service/kv.rs``): the store id, a sequence number that only grows (TiKV seeds it
with the Unix time when the server starts) and the raftstore slow score, 1 for a healthy store
(the mock never slows down unless a fault delays it). The same feedback rides on BatchCommands
responses at most once per second (TiKV's default ``health-feedback-interval``).

``GetStoreSafeTS`` answers with the smallest safe (resolved) ts of the store's regions that
overlap the request's key range (all of them for an empty range), as TiKV's check-leader worker
does (``GetStoreTs``). Each region's safe ts follows the cluster clock minus the store's lag,
stays at or below the start ts of every prewrite lock in the region (pessimistic locks do not
hold back TiKV's resolved ts), never decreases, and stops while a test holds the store: see
:mod:`tikv_mockstore.safe_ts`.
"""

from __future__ import annotations

from typing import cast

from tikv_proto import kvrpcpb_pb2

from tikv_mockstore.handlers import StoreScope, handler
from tikv_mockstore.safe_ts import store_safe_ts as _store_safe_ts
from tikv_mockstore.tikv_service import StoreScope as MockStoreScope

__all__ = ["get_health_feedback", "get_store_safe_ts", "store_safe_ts"]


@handler("GetHealthFeedback")
def get_health_feedback(
    scope: StoreScope, req: kvrpcpb_pb2.GetHealthFeedbackRequest
) -> kvrpcpb_pb2.GetHealthFeedbackResponse:
    """GetHealthFeedback: this store's feedback (no region checks, as TiKV)."""
    mock = cast(MockStoreScope, scope)
    return kvrpcpb_pb2.GetHealthFeedbackResponse(health_feedback=mock.health_feedback())


def store_safe_ts(scope: StoreScope, start_key: bytes = b"", end_key: bytes = b"") -> int:
    """The serving store's safe ts over ``[start_key, end_key)``.

    See :func:`tikv_mockstore.safe_ts.store_safe_ts`.
    """
    mock = cast(MockStoreScope, scope)
    return _store_safe_ts(mock.cluster, mock.engine, mock.store_id, start_key, end_key)


@handler("GetStoreSafeTS")
def get_store_safe_ts(
    scope: StoreScope, req: kvrpcpb_pb2.StoreSafeTSRequest
) -> kvrpcpb_pb2.StoreSafeTSResponse:
    """GetStoreSafeTS: the minimum safe ts of the store's regions in the key range."""
    key_range = req.key_range
    return kvrpcpb_pb2.StoreSafeTSResponse(
        safe_ts=store_safe_ts(scope, key_range.start_key, key_range.end_key)
    )
