"""Existence assertions end to end: client-go ``integration_tests/assertion_test.go``
(``TestPrewriteAssertion``, ``TestFastAssertion``, ``TestAssertionErrorLessPriorToOtherError``)
through ``TransactionClient``.

A transaction asserts with ``set_assertion`` that a key it writes exists / does not exist;
the check is TiKV's (the store's prewrite) at ``assertion_level="Strict"``, and at ``"Fast"``
only where prewrite reads the key anyway (an optimistic prewrite's conflict check) plus the
client's own comparison with what a pessimistic lock learned (``check_exists_for_update``).
client-go's test turns checks off with failpoints to see each side alone; here both sides
run as TiKV and the client really run them, so the expectations are what a user sees:

============================  =========================================================
level, mode                   what catches a false assertion
============================  =========================================================
Strict, any                   the store, with the existing version's start / commit ts
Fast, optimistic              the store (the conflict check read the key), with its ts
Fast, pessimistic, plain lock nothing (TiKV skips the read of a locked key)
Fast, pessimistic, existence  the client, from the lock's answer (existing ts unknown: 0)
============================  =========================================================
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_pd.errors import TxnAbortedError
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2_grpc
from tikv_txn import (
    AssertionFailedError,
    AsyncTransaction,
    TiKVError,
    TransactionClient,
    TransactionOptions,
)

EXIST = 1  # kvrpcpb.Assertion.Exist
NOT_EXIST = 2  # kvrpcpb.Assertion.NotExist


@dataclass(frozen=True)
class Case:
    level: str
    pessimistic: bool
    lock_keys: bool

    @property
    def id(self) -> str:
        mode = "pessimistic" if self.pessimistic else "optimistic"
        return f"{self.level}-{mode}{'-check-existence' if self.lock_keys else ''}"


CASES = [
    Case("Strict", False, False),
    Case("Strict", True, False),
    Case("Strict", True, True),
    Case("Fast", False, False),
    Case("Fast", True, False),
    Case("Fast", True, True),
]


def _run(
    client: TransactionClient,
    case: Case,
    p: bytes,
    assertion: str,
    *keys: bytes,
) -> tuple[int, BaseException | None]:
    """client-go doTxn: write ``keys`` (value ``b"v" + key``), assert on the last one."""
    options = TransactionOptions(
        mode="pessimistic" if case.pessimistic else "optimistic",
        assertion_level=case.level,  # type: ignore[arg-type]
    )
    t = client.begin(options)
    if case.lock_keys:
        # client-go LockKeys with InitCheckExistence: the lock says whether each exists.
        t.check_exists_for_update(list(keys))
    elif case.pessimistic:
        # Another key becomes the primary, so the keys under test are plain secondaries.
        t.lock_keys([p + b"primary"])
    for key in keys:
        t.put(key, b"v" + key)
    t.set_assertion(keys[-1], assertion)  # type: ignore[arg-type]
    try:
        t.commit()
    except TiKVError as exc:
        return t.start_ts, exc
    return t.start_ts, None


def _expect_failure(
    outcome: tuple[int, BaseException | None],
    key: bytes,
    assertion: int,
    existing: tuple[int, int],
) -> None:
    start_ts, exc = outcome
    assert isinstance(exc, AssertionFailedError), exc
    assert exc.start_ts == start_ts
    assert exc.key == key
    assert exc.assertion == assertion
    assert (exc.existing_start_ts, exc.existing_commit_ts) == existing


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_assertion(txn: TransactionClient, tprefix: bytes, case: Case) -> None:
    p = tprefix + case.id.encode() + b"/"

    def k(i: int) -> bytes:
        return p + b"k%d" % i

    # k1, k3, k7 exist.
    prepare = txn.begin()
    for i in (1, 3, 7):
        prepare.put(k(i), b"v%d" % i)
    prepare_commit = prepare.commit()
    prepared = (prepare.start_ts, prepare_commit)

    # True assertions always commit.
    assert _run(txn, case, p, "exist", k(1))[1] is None
    assert _run(txn, case, p, "not_exist", k(2))[1] is None

    one_wrong_nx = _run(txn, case, p, "not_exist", k(3))
    one_wrong_ex = _run(txn, case, p, "exist", k(4))
    many_wrong_nx = _run(txn, case, p, "not_exist", k(5), k(6), k(7))
    many_wrong_ex = _run(txn, case, p, "exist", k(8), k(9), k(10))
    outcomes = [one_wrong_nx, one_wrong_ex, many_wrong_nx, many_wrong_ex]

    if case.level == "Fast" and case.pessimistic and not case.lock_keys:
        # Nothing can tell: TiKV skips reading a pessimistically locked key below Strict,
        # and the plain lock did not learn whether it existed.
        assert [exc for _, exc in outcomes] == [None] * 4
        expected = {k(i): b"v" + k(i) for i in range(1, 11)}
    else:
        # The client's check has no version to name; the store's names the existing one.
        client_side = case.level == "Fast" and case.lock_keys
        existing = (0, 0) if client_side else prepared
        _expect_failure(one_wrong_nx, k(3), NOT_EXIST, existing)
        _expect_failure(one_wrong_ex, k(4), EXIST, (0, 0))
        _expect_failure(many_wrong_nx, k(7), NOT_EXIST, existing)
        _expect_failure(many_wrong_ex, k(10), EXIST, (0, 0))
        # The failed transactions left nothing: no value, no lock (a reader would block
        # or resolve otherwise), the prepared values intact.
        expected = {k(1): b"v" + k(1), k(2): b"v" + k(2), k(3): b"v3", k(7): b"v7"}
    with txn.begin() as check:
        assert dict(check.scan(p + b"k", p + b"l", limit=100)) == expected


def test_failed_pessimistic_assertion_releases_every_lock(
    txn: TransactionClient, tprefix: bytes
) -> None:
    """After a client-side (Fast) failure the prewritten locks are rolled back: another
    pessimistic transaction locks the same keys without waiting."""
    p = tprefix
    with txn.begin() as t:
        t.put(p + b"a", b"old")
    options = TransactionOptions(mode="pessimistic", assertion_level="Fast")
    t = txn.begin(options)
    assert t.check_exists_for_update([p + b"a", p + b"b"]) == {p + b"a": True, p + b"b": False}
    t.put(p + b"a", b"new")
    t.put(p + b"b", b"new")
    t.set_assertion(p + b"a", "not_exist")
    with pytest.raises(AssertionFailedError) as info:
        t.commit()
    assert info.value.key == p + b"a"
    other = txn.begin(TransactionOptions(mode="pessimistic", lock_wait_timeout_ms=5000))
    assert other.get_for_update(p + b"a") == b"old"
    assert other.get_for_update(p + b"b") is None
    other.rollback()


def test_assertion_none_and_unknown_are_not_checked(txn: TransactionClient, tprefix: bytes) -> None:
    p = tprefix
    with txn.begin() as t:
        t.put(p + b"a", b"1")
    strict = TransactionOptions(assertion_level="Strict")
    with txn.begin(strict) as t:
        t.put(p + b"a", b"2")
        t.set_assertion(p + b"a", "not_exist")
        t.set_assertion(p + b"a", "none")  # removed again
    with txn.begin(strict) as t:
        t.put(p + b"b", b"2")
        t.set_assertion(p + b"b", "unknown")
    with txn.begin() as t:
        assert t.batch_get([p + b"a", p + b"b"]) == {p + b"a": b"2", p + b"b": b"2"}


def test_set_assertion_refuses_bad_input(txn: TransactionClient, tprefix: bytes) -> None:
    t = txn.begin(TransactionOptions(assertion_level="Strict"))
    t.put(tprefix + b"a", b"1")
    with pytest.raises(ValueError, match="assertion must be one of"):
        t.set_assertion(tprefix + b"a", "exists")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no write or lock"):
        t.set_assertion(tprefix + b"never-written", "exist")
    with pytest.raises(TypeError):
        t.set_assertion("a", "exist")  # type: ignore[arg-type]
    t.rollback()
    off = txn.begin()  # assertion_level "Off": the assertion would never be checked
    off.put(tprefix + b"a", b"1")
    with pytest.raises(ValueError, match="assertion_level"):
        off.set_assertion(tprefix + b"a", "exist")
    off.rollback()


# -- TestAssertionErrorLessPriorToOtherError ---------------------------------------------


def _send(cluster: MockCluster, key: bytes, method: str, request: Any) -> Any:
    """Send ``request`` straight to the leader of ``key``'s region (a hand-made RPC)."""
    region = cluster.region_by_key(key, txn=True)
    assert region is not None and region.leader is not None
    request.context.CopyFrom(
        kvrpcpb_pb2.Context(
            region_id=region.id,
            region_epoch=region.to_pb().region_epoch,
            peer=region.leader.to_pb(),
        )
    )
    address = cluster.store_addresses[region.leader.store_id]
    with grpc.insecure_channel(address) as channel:
        response = getattr(tikvpb_pb2_grpc.TikvStub(channel), method)(request, timeout=10)
    assert not response.HasField("region_error"), response.region_error
    return response


def _lose_lock_then_assert(
    client: TransactionClient, cluster: MockCluster, p: bytes
) -> AsyncTransaction:
    """t1 locks ``locked`` and loses that lock; t2 writes ``locked`` and ``other``; t1
    then writes both, asserting both absent (returned, to commit)."""
    locked, other = p + b"locked", p + b"other"
    strict = TransactionOptions(mode="pessimistic", assertion_level="Strict")
    t1 = client.begin(strict).async_transaction
    client.loop_thread.run(t1.lock_keys([locked]))
    # The lock is lost: rolled back as a resolver rolls back a holder it believes dead.
    _send(
        cluster,
        locked,
        "KVPessimisticRollback",
        kvrpcpb_pb2.PessimisticRollbackRequest(
            start_version=t1.start_ts, for_update_ts=t1.locker.for_update_ts, keys=[locked]
        ),
    )
    with client.begin(strict) as t2:
        t2.put(locked, b"t2")
        t2.put(other, b"t2")
        t2.set_assertion(locked, "not_exist")
        t2.set_assertion(other, "not_exist")
    # ``other`` gets a fresh lock at commit (the write waits for it: async API), so its
    # prewrite passes the lock check and fails only its assertion (t2's value exists);
    # ``locked`` still counts as locked by t1 and fails its prewrite's lock check.
    t1.put(locked, b"t1")
    t1.put(other, b"t1")
    t1.set_assertion(locked, "not_exist")
    t1.set_assertion(other, "not_exist")
    return t1


def _check_lost_lock_wins(
    outcome: BaseException | None, client: TransactionClient, p: bytes
) -> None:
    # TiKV sends a missing pessimistic lock as ``KeyError.abort`` (no field of its own).
    assert isinstance(outcome, TxnAbortedError), outcome
    assert "PessimisticLockNotFound" in outcome.reason
    with client.begin() as check:
        assert check.batch_get([p + b"locked", p + b"other"]) == {
            p + b"locked": b"t2",
            p + b"other": b"t2",
        }


def test_assertion_error_gives_way_in_one_prewrite(
    mock: MockCluster, txn: TransactionClient, tprefix: bytes
) -> None:
    """Both keys in one prewrite request: the store reports the lost lock."""
    t1 = _lose_lock_then_assert(txn, mock, tprefix)
    future = txn.loop_thread.submit(t1.commit())
    _check_lost_lock_wins(future.exception(timeout=60), txn, tprefix)


@pytest.mark.parametrize("first", ["assertion", "lost-lock"])
def test_assertion_error_gives_way_to_other_batches(first: str) -> None:
    """The keys in two regions, so two prewrites: whichever answer comes first, the
    lost lock is the error reported; an assertion failure that comes first is held while
    the other batch runs (client-go ``batchExecutor.process``, tikv/tikv#12113)."""
    p = b"\xd0assert/"
    with (
        MockCluster(stores=1, regions=1) as cluster,
        TransactionClient.connect(cluster.pd_endpoints) as client,
    ):
        cluster.split([p + b"other"], txn=True)
        regions = {
            name: cluster.region_by_key(p + name.encode(), txn=True) for name in ("locked", "other")
        }
        assert all(r is not None for r in regions.values())
        assert regions["locked"].id != regions["other"].id  # type: ignore[union-attr]
        t1 = _lose_lock_then_assert(client, cluster, p)
        holds = {
            name: cluster.faults.add("KvPrewrite", region=r.id, hang=True, times=1)  # type: ignore[union-attr]
            for name, r in regions.items()
        }
        try:
            future = client.loop_thread.submit(t1.commit())
            assert cluster.faults.wait_hanging(2, 30)
            # Let the chosen answer out first, and the other once it has been served.
            early, late = ("other", "locked") if first == "assertion" else ("locked", "other")
            holds[early].release()
            deadline = time.monotonic() + 30
            while cluster.faults.hanging() > 1:
                assert time.monotonic() < deadline, "the released prewrite stayed blocked"
                time.sleep(0.005)
            holds[late].release()
            outcome = future.exception(timeout=60)
        finally:
            cluster.faults.clear()
        _check_lost_lock_wins(outcome, client, p)
