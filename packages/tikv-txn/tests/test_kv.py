"""tikv_txn._kv: the KeyError mapping comes from tikv_pd.key_errors (one implementation)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tikv_pd import key_errors
from tikv_pd.codec import make_codec
from tikv_pd.errors import (
    AssertionFailedError,
    CommitTsExpiredError,
    DeadlockError,
    KeyExistsError,
    KeyIsLockedError,
    LockInfo,
    LockWaitTimeoutError,
    PessimisticLockNotFoundError,
    PrimaryMismatchError,
    TxnError,
    TxnLockNotFoundError,
    TxnNotFoundError,
    WaitForEntry,
    WriteConflictError,
)
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


# -- user keys in errors (API v2) --------------------------------------------------------

V2 = make_codec(2, "txn", 7)
PFX = V2.encode_key(b"")


def test_decode_error_keys_strips_the_keyspace_prefix_from_every_key_kind() -> None:
    lock = LockInfo(
        primary_lock=PFX + b"p", lock_version=5, key=PFX + b"k", secondaries=(PFX + b"s",)
    )
    cases: list[tuple[TxnError, Callable[[Any], object], object]] = [
        (
            WriteConflictError(
                start_ts=1,
                conflict_start_ts=2,
                conflict_commit_ts=3,
                key=PFX + b"k",
                primary=PFX + b"p",
            ),
            lambda e: (e.key, e.primary),
            (b"k", b"p"),
        ),
        (KeyExistsError(PFX + b"k"), lambda e: e.key, b"k"),
        (
            DeadlockError(
                lock_ts=1,
                lock_key=PFX + b"k",
                deadlock_key_hash=9,
                wait_chain=[WaitForEntry(txn=1, wait_for_txn=2, key_hash=9, key=PFX + b"w")],
            ),
            lambda e: (e.lock_key, e.wait_chain[0].key),
            (b"k", b"w"),
        ),
        (AssertionFailedError(start_ts=1, key=PFX + b"k", assertion=1), lambda e: e.key, b"k"),
        (TxnNotFoundError(1, PFX + b"p"), lambda e: e.primary_key, b"p"),
        (TxnLockNotFoundError(PFX + b"k"), lambda e: e.key, b"k"),
        (
            CommitTsExpiredError(
                start_ts=1, attempted_commit_ts=2, key=PFX + b"k", min_commit_ts=3
            ),
            lambda e: e.key,
            b"k",
        ),
        (LockWaitTimeoutError(PFX + b"k", 1), lambda e: e.key, b"k"),
        (PessimisticLockNotFoundError(1, PFX + b"k"), lambda e: e.key, b"k"),
        (
            KeyIsLockedError(lock),
            lambda e: (e.lock.key, e.lock.primary_lock, e.lock.secondaries),
            (b"k", b"p", (b"s",)),
        ),
        (PrimaryMismatchError(lock), lambda e: (e.lock.key, e.lock.primary_lock), (b"k", b"p")),
    ]
    for exc, read, want in cases:
        assert _kv.decode_error_keys(exc, V2) is exc
        assert read(exc) == want, type(exc).__name__
        # Once only: a second call leaves user keys alone.
        assert read(_kv.decode_error_keys(exc, V2)) == want
    assert {type(exc) for exc, _, _ in cases} == set(_kv.KEYED_ERRORS)


def test_decode_error_keys_leaves_api_v1_and_foreign_keys_alone() -> None:
    exc = KeyExistsError(PFX + b"k")
    assert _kv.decode_error_keys(exc, make_codec(0, "txn")).key == PFX + b"k"
    empty = WriteConflictError(start_ts=1, conflict_start_ts=0, conflict_commit_ts=0, key=b"x")
    assert _kv.decode_error_keys(empty, V2).key == b"x"  # not this keyspace's: kept
    assert empty.primary == b""


#: Modules whose errors are built from the user's keys (the write buffer), never stored ones.
#: The committer's stashed assertion error is built in ``prepare`` from the mutations
#: before they are encoded for API v2 (``_check_assertions_by_locks``).
_USER_KEY_BUILDERS = {
    ("pessimistic.py", "KeyExistsError"),
    ("committer.py", "AssertionFailedError"),
}


def test_every_error_with_keys_is_built_through_the_decoder() -> None:
    """The guard that keeps every path decoded: no module builds a keyed error raw.

    Errors with keys come from ``TxnRuntime.key_error`` / ``locks_of`` / ``locked_error``
    / ``user_error``; a direct ``key_error_to_exception(...)``, ``locks_of(...)`` or
    ``WriteConflictError(...)`` (or any other keyed error) elsewhere would leak stored keys.
    """
    names = {kind.__name__ for kind in _kv.KEYED_ERRORS} | {"key_error_to_exception", "locks_of"}
    decoders = {"decode_error_keys", "user_error"}
    offenders: list[str] = []
    package = Path(_kv.__file__).parent
    for path in sorted(package.glob("*.py")):
        if path.name == "_kv.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        inside_decoder: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called(node) in decoders:
                inside_decoder.update(id(arg) for arg in node.args)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or isinstance(node.func, ast.Attribute):
                continue  # methods (self._rt.locks_of, ...) are the decoding entry points
            name = _called(node)
            if name not in names or id(node) in inside_decoder:
                continue
            if (path.name, name) in _USER_KEY_BUILDERS:
                continue
            offenders.append(f"{path.name}:{node.lineno}: {name}(...)")
    assert offenders == []


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""
