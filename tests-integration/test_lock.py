"""Lock resolution by readers and writers: the semantics of client-go
``integration_tests/lock_test.go`` (``TestScanLockResolveWithGet`` / ``WithSeek`` /
``WithSeekKeyOnly`` / ``WithBatchGet``, ``TestCleanLock``) through ``TransactionClient``.

The locks are left by hand-made transactions (prewrites and primary commits sent straight
to the store over gRPC, as client-go's committer probe does): a committed primary with a
locked secondary (readers must commit the secondary's value), a live uncommitted
transaction (readers must read the old value without waiting for its TTL), a committed
delete. These need the embedded cluster's region metadata.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import AsyncIterator

import grpc
import pytest
from tikv_mockstore import MockCluster
from tikv_proto import kvrpcpb_pb2, tikvpb_pb2_grpc
from tikv_txn import AsyncTransactionClient

ALPHABET = [c.encode() for c in string.ascii_lowercase]
NO_HANG = 30.0


class Locks:
    """Hand-made transactions on the embedded cluster, rolled back at the end."""

    def __init__(self, cluster: MockCluster, client: AsyncTransactionClient) -> None:
        self.cluster = cluster
        self.client = client
        self.open: list[tuple[list[bytes], int]] = []

    def _call(self, key: bytes, method: str, request: object) -> object:
        region = self.cluster.region_by_key(key, txn=True)
        assert region is not None and region.leader is not None
        request.context.CopyFrom(  # type: ignore[attr-defined]
            kvrpcpb_pb2.Context(
                region_id=region.id,
                region_epoch=region.to_pb().region_epoch,
                peer=region.leader.to_pb(),
            )
        )
        address = self.cluster.store_addresses[region.leader.store_id]
        with grpc.insecure_channel(address) as channel:
            response = getattr(tikvpb_pb2_grpc.TikvStub(channel), method)(request, timeout=10)
        assert not response.HasField("region_error"), response.region_error
        return response

    async def lock_key(
        self,
        key: bytes,
        value: bytes | None,
        primary: bytes,
        primary_value: bytes,
        *,
        ttl: int,
        commit_primary: bool,
    ) -> int:
        """Prewrite ``key`` and ``primary`` (one region); optionally commit the primary."""
        start_ts = await self.client.current_timestamp()
        mutations = [
            kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=primary, value=primary_value),
            kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Put, key=key, value=value)
            if value is not None
            else kvrpcpb_pb2.Mutation(op=kvrpcpb_pb2.Del, key=key),
        ]
        response = self._call(
            key,
            "KvPrewrite",
            kvrpcpb_pb2.PrewriteRequest(
                mutations=mutations,
                primary_lock=primary,
                start_version=start_ts,
                lock_ttl=ttl,
                txn_size=2,
                # As client-go's committer: lets readers push the commit ts past them.
                min_commit_ts=start_ts + 1,
            ),
        )
        assert not response.errors, response.errors  # type: ignore[attr-defined]
        if commit_primary:
            commit_ts = await self.client.current_timestamp()
            committed = self._call(
                primary,
                "KvCommit",
                kvrpcpb_pb2.CommitRequest(
                    start_version=start_ts, keys=[primary], commit_version=commit_ts
                ),
            )
            assert not committed.HasField("error"), committed.error  # type: ignore[attr-defined]
        else:
            self.open.append(([primary, key], start_ts))
        return start_ts

    def rollback_open(self) -> None:
        for keys, start_ts in self.open:
            self._call(
                keys[0],
                "KvBatchRollback",
                kvrpcpb_pb2.BatchRollbackRequest(start_version=start_ts, keys=keys),
            )


@pytest.fixture
async def locks(
    mock: MockCluster, tprefix: bytes
) -> AsyncIterator[tuple[AsyncTransactionClient, Locks]]:
    async with await AsyncTransactionClient.connect(mock.pd_endpoints) as client:
        made = Locks(mock, client)
        try:
            yield client, made
        finally:
            made.rollback_open()
            async with client.begin() as cleanup:
                for key, _ in await cleanup.scan(tprefix, tprefix + b"\xff", limit=10_000):
                    cleanup.delete(key)


async def _put(client: AsyncTransactionClient, key: bytes, value: bytes) -> None:
    async with client.begin() as txn:
        txn.put(key, value)


async def _prepare_alphabet_locks(client: AsyncTransactionClient, locks: Locks, p: bytes) -> None:
    """client-go putAlphabets + prepareAlphabetLocks."""
    async with client.begin() as txn:
        for ch in ALPHABET:
            txn.put(p + ch, ch)
    await _put(client, p + b"c", b"cc")
    # c: committed primary z1, secondary still locked -> readers see "c".
    await locks.lock_key(p + b"c", b"c", p + b"z1", b"z1", ttl=3000, commit_primary=True)
    # d, foo: live transactions -> readers see the old values, without waiting.
    await locks.lock_key(p + b"d", b"dd", p + b"z2", b"z2", ttl=3000, commit_primary=False)
    await locks.lock_key(p + b"foo", b"foo", p + b"z3", b"z3", ttl=3000, commit_primary=False)
    # bar: a committed delete.
    await _put(client, p + b"bar", b"bar")
    await locks.lock_key(p + b"bar", None, p + b"z4", b"z4", ttl=3000, commit_primary=True)


async def test_scan_lock_resolve_with_get(
    locks: tuple[AsyncTransactionClient, Locks], tprefix: bytes
) -> None:
    client, made = locks
    await _prepare_alphabet_locks(client, made, tprefix)
    txn = await client.begin()
    for ch in ALPHABET:
        assert await asyncio.wait_for(txn.get(tprefix + ch), NO_HANG) == ch
    assert await txn.get(tprefix + b"bar") is None
    await txn.rollback()


@pytest.mark.parametrize("key_only", [False, True])
async def test_scan_lock_resolve_with_seek(
    locks: tuple[AsyncTransactionClient, Locks], tprefix: bytes, key_only: bool
) -> None:
    client, made = locks
    await _prepare_alphabet_locks(client, made, tprefix)
    txn = await client.begin()
    got = await asyncio.wait_for(
        txn.scan(tprefix + b"a", tprefix + b"\xff", limit=26, key_only=key_only), NO_HANG
    )
    assert [k for k, _ in got] == [tprefix + ch for ch in ALPHABET]
    assert [v for _, v in got] == ([b""] * 26 if key_only else ALPHABET)
    await txn.rollback()


async def test_scan_lock_resolve_with_batch_get(
    locks: tuple[AsyncTransactionClient, Locks], tprefix: bytes
) -> None:
    client, made = locks
    await _prepare_alphabet_locks(client, made, tprefix)
    txn = await client.begin()
    got = await asyncio.wait_for(txn.batch_get([tprefix + ch for ch in ALPHABET]), NO_HANG)
    assert got == {tprefix + ch: ch for ch in ALPHABET}
    await txn.rollback()


async def test_clean_lock(locks: tuple[AsyncTransactionClient, Locks], tprefix: bytes) -> None:
    # Every key locked by an abandoned transaction of its own (primary = the key) whose
    # TTL has run out: a writer rolls them back and commits. (A lock that is still alive
    # makes the writer wait until the oracle's low-resolution ts passes its expiry, up to
    # its 2 s refresh, as in client-go.)
    client, made = locks
    for ch in ALPHABET:
        await made.lock_key(tprefix + ch, ch, tprefix + ch, ch, ttl=1, commit_primary=False)
    async with client.begin() as txn:
        for ch in ALPHABET:
            txn.put(tprefix + ch, bytes([ch[0] + 1]))
    reader = await client.begin()
    got = await reader.batch_get([tprefix + ch for ch in ALPHABET])
    assert got == {tprefix + ch: bytes([ch[0] + 1]) for ch in ALPHABET}
    await reader.rollback()
