"""Fixtures of the shared integration suite.

By default the suite runs against an embedded ``MockCluster`` (3 stores, pre-split into 8
regions by the first key byte, leaders spread over the stores) started once per session.
Set ``TIKV_PD_ENDPOINTS=host:port,...`` to run it against a real cluster instead; tests that
need the embedded cluster's control API (splits on demand, fault injection, the clock,
counters) are then skipped with a reason.

Every test works under its own key prefix (the ``prefix`` fixture) and cleans it afterwards,
so tests never see each other's keys, on either kind of cluster.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tikv_mockstore import MockCluster
from tikv_raw import AsyncRawClient, RawClient
from tikv_txn import AsyncTransactionClient, TransactionClient

_SUITE = str(Path(__file__).resolve().parent)
if _SUITE not in sys.path:  # import-mode=importlib: make ``_support`` importable
    sys.path.insert(0, _SUITE)

from _support import spread_leaders  # noqa: E402

REAL_ENDPOINTS = [e for e in os.environ.get("TIKV_PD_ENDPOINTS", "").split(",") if e]


@pytest.fixture(scope="session")
def embedded() -> Iterator[MockCluster | None]:
    """The session's embedded cluster, or ``None`` when running against a real one."""
    if REAL_ENDPOINTS:
        yield None
        return
    with MockCluster(stores=3, regions=8) as cluster:
        spread_leaders(cluster)
        yield cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    """A private embedded cluster per module: 3 stores, 4 regions split at first bytes
    0x40 / 0x80 / 0xC0, every leader on store 1 — for modules that inject faults, move the
    clock or read the engine, and route keys by first byte (a module or directory needing
    another shape defines its own ``cluster``, which wins)."""
    with MockCluster(stores=3, regions=4) as mock:
        yield mock


@pytest.fixture
async def client(cluster: MockCluster) -> AsyncIterator[AsyncTransactionClient]:
    """An asyncio transactional client of the module's private ``cluster``."""
    async with await AsyncTransactionClient.connect(cluster.pd_endpoints) as c:
        yield c


@pytest.fixture(scope="session")
def pd_endpoints(embedded: MockCluster | None) -> list[str]:
    """PD endpoints of the cluster under test."""
    return REAL_ENDPOINTS if embedded is None else embedded.pd_endpoints


@pytest.fixture
def mock(embedded: MockCluster | None) -> MockCluster:
    """The embedded cluster, for tests that use its control API (skipped on a real cluster)."""
    if embedded is None:
        pytest.skip("needs the embedded cluster's control API (TIKV_PD_ENDPOINTS is set)")
    return embedded


@pytest.fixture
def faults(mock: MockCluster) -> Iterator[list[Any]]:
    """Faults a test adds to the embedded cluster (append them): removed afterwards, so
    they never leak into other tests."""
    added: list[Any] = []
    yield added
    for fault in added:
        mock.faults.remove(fault)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> bytes:
    """A key prefix unique to this test (stable across runs, so leftovers are recognisable)."""
    digest = hashlib.blake2b(request.node.nodeid.encode(), digest_size=6).hexdigest()
    return f"it/{digest}/".encode()


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


@pytest.fixture
def raw(pd_endpoints: list[str], prefix: bytes) -> Iterator[RawClient]:
    """A sync raw client; the test's prefix is wiped before and after the test."""
    with RawClient.connect(pd_endpoints) as client:
        client.delete_range(prefix, _prefix_end(prefix))
        yield client
        client.delete_range(prefix, _prefix_end(prefix))


@pytest.fixture
async def araw(pd_endpoints: list[str], prefix: bytes) -> AsyncIterator[AsyncRawClient]:
    """An asyncio raw client; the test's prefix is wiped before and after the test."""
    client = await AsyncRawClient.connect(pd_endpoints)
    try:
        await client.delete_range(prefix, _prefix_end(prefix))
        yield client
        await client.delete_range(prefix, _prefix_end(prefix))
    finally:
        await client.close()


@pytest.fixture
def tprefix(prefix: bytes) -> bytes:
    """This test's prefix for transactional keys.

    Raw tests split the shared cluster at raw keys under ``it/...`` (first byte 0x69), and
    a transactional client cannot use a region whose boundaries are not memcomparable
    (client-go fails the same way), so transactional keys live under first byte 0xd0.
    """
    return b"\xd0" + prefix


@pytest.fixture
def txn(pd_endpoints: list[str], tprefix: bytes) -> Iterator[TransactionClient]:
    """A sync transactional client; the test's transactional keys are deleted afterwards."""
    with TransactionClient.connect(pd_endpoints) as client:
        yield client
        with client.begin() as cleanup:
            for key, _ in cleanup.scan(tprefix, tprefix + b"\xff", limit=10_000):
                cleanup.delete(key)
