"""tikv_txn._kv: the KeyError mapping comes from tikv_pd.key_errors (one implementation)."""

from __future__ import annotations

from tikv_pd import key_errors
from tikv_pd.errors import KeyExistsError
from tikv_proto import kvrpcpb_pb2
from tikv_txn import _kv
from tikv_txn.policy import Mutation, Op


def test_the_key_error_mapping_is_re_exported_from_tikv_pd() -> None:
    assert _kv.key_error_to_exception is key_errors.key_error_to_exception
    assert _kv.lock_from_pb is key_errors.lock_from_pb
    assert _kv.locks_of is key_errors.locks_of
    err = kvrpcpb_pb2.KeyError(already_exist=kvrpcpb_pb2.AlreadyExist(key=b"k"))
    exc = _kv.key_error_to_exception(err)
    assert isinstance(exc, KeyExistsError) and exc.key == b"k"


def test_mutation_to_pb_carries_op_value_and_assertion() -> None:
    pb = _kv.mutation_to_pb(Mutation(Op.PUT, b"k", b"v", assert_not_exist=True), b"enc")
    assert (pb.op, pb.key, pb.value, pb.assertion) == (
        kvrpcpb_pb2.Op.Put,
        b"enc",
        b"v",
        kvrpcpb_pb2.Assertion.NotExist,
    )
