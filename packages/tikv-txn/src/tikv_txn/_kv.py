"""Translation between kvproto messages and the transaction layer's types.

The ``kvrpcpb.KeyError`` mapping lives in :mod:`tikv_pd.key_errors` (shared with the raw
client and other callers of the request pipeline) and is re-exported here for the
transaction modules; this module adds what only transactions need: building prewrite
mutations from the protocol-neutral :class:`tikv_txn.policy.Mutation`.
"""

from __future__ import annotations

from tikv_pd.key_errors import key_error_to_exception, lock_from_pb, locks_of
from tikv_proto import kvrpcpb_pb2

from tikv_txn.policy import Mutation

__all__ = [
    "key_error_to_exception",
    "lock_from_pb",
    "locks_of",
    "mutation_to_pb",
]

_ASSERT_NONE = 0
_ASSERT_EXIST = 1
_ASSERT_NOT_EXIST = 2


def mutation_to_pb(m: Mutation, key: bytes) -> kvrpcpb_pb2.Mutation:
    """Build the ``kvrpcpb.Mutation`` of ``m`` for the (encoded) ``key``."""
    assertion = _ASSERT_NONE
    if m.assert_exist:
        assertion = _ASSERT_EXIST
    elif m.assert_not_exist:
        assertion = _ASSERT_NOT_EXIST
    return kvrpcpb_pb2.Mutation(
        op=int(m.op),  # type: ignore[arg-type]
        key=key,
        value=m.value,
        assertion=assertion,  # type: ignore[arg-type]
    )
